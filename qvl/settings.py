"""One settings class: every knob has a default, a type and a one-line description.

Read from the environment (``QVL_*``, plus ``DATABASE_URL`` and ``REDIS_URL``) and
an optional ``.env`` file. Passed in through constructors, never read deep inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qvl.models import EngineKind, Family
from qvl.protocol import Scope

# A comma-separated list of ids in the environment, a set in the program (empty: any).
Ids = Annotated[frozenset[str], NoDecode]

DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
# Qwen-VL-Chat's own code may run only at these revisions (the Hugging Face commits
# and ModelScope tags its users pin); see worker/engines/remote_code.py.
QWEN_VL_TRUSTED = ",".join((
    "Qwen/Qwen-VL-Chat@f57cfbd358cb56b710d963669ad1bcfb44cdcdd8",
    "Qwen/Qwen-VL-Chat-Int4@cbe5f4e5a742f3019d084e0d53861f72b4e60350",
    "modelscope:qwen/Qwen-VL-Chat@v1.1.0",
    "modelscope:qwen/Qwen-VL-Chat-Int4@v1.0.0",
))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QVL_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    data_dir: Path = Field(Path.home() / ".local/share/qvl",
                           description="SQLite file, embedded Redis and model cache live here")
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "QVL_DATABASE_URL"),
        description="SQLAlchemy URL; default: SQLite under data_dir")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "QVL_REDIS_URL"),
        description="Redis for the queue and reply stream; default: an embedded redis-server")
    namespace: str = Field("qvl", description="prefix of queue names and Redis keys (several deployments on one Redis)")

    model: str = Field(DEFAULT_MODEL, description="Hugging Face id, modelscope:ORG/NAME, or a local directory")
    engine: str = Field(EngineKind.AUTO, description="auto (from the model) | transformers | qwen-vl | openai | "
                                                     "echo | module:Class")
    family: Family | None = Field(None, description="qwen-vl | qwen2-vl | qwen2.5-vl | qwen3-vl; default: from the model")
    device: str = Field("auto", description="torch device for the transformers and qwen-vl engines")
    quantize: Literal["none", "nf4"] = Field("none", description="none | nf4: load the qwen-vl engine's model in 4-bit NF4 "
                                              "(bitsandbytes, as Qwen-VL-Chat's card sets it up)")
    qwen_vl_trusted: str = Field(
        QWEN_VL_TRUSTED, description="comma-separated ORG/NAME@REVISION or sha256:DIGEST whose own code "
                                     "(trust_remote_code) the qwen-vl engine may run")
    openai_base_url: str | None = Field(None, description="an OpenAI-compatible server, e.g. http://vllm:8000/v1")
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("QVL_OPENAI_API_KEY", "OPENAI_API_KEY", "DASHSCOPE_API_KEY"),
        description="the server's API key (DashScope's for qwen-vl-plus / qwen-vl-max)")
    max_new_tokens: int = Field(512, ge=1, description="longest answer, in tokens")
    system_prompt: str = Field("You are a helpful assistant.", description="the system turn")

    context_max_messages: int = Field(20, ge=1, description="turns of history sent to the model, newest kept")
    context_max_images: int = Field(4, ge=1, description="pictures kept in the context window, newest kept")
    context_token_budget: int = Field(6144, ge=256, description="prompt tokens the context may use")

    image_max_bytes: int = Field(20 * 1024 * 1024, description="largest picture accepted, in bytes")
    image_max_pixels: int = Field(50_000_000, description="largest picture accepted, in pixels")
    images_per_message: int = Field(8, ge=1, description="pictures accepted in one message")
    image_max_aspect: float = Field(200.0, gt=1, description="longest side over shortest side a picture may have "
                                                             "(Qwen2-VL's processor refuses over 200)")
    image_max_scans: int = Field(100, ge=1, description="most JPEG scans (SOS markers) a picture may have: "
                                                       "bounds a progressive JPEG's decoding work")
    image_decode_s: float = Field(30.0, gt=0, description="longest time the worker spends decoding one picture")
    turn_time_limit_s: int = Field(600, ge=1, description="hard time limit of one turn in a worker (prefork pool: "
                                                          "the stalled child is killed and replaced)")
    worker_concurrency: int | None = Field(
        None, ge=1, description="turns one worker keeps in flight (default: the engine's: openai 32, transformers "
                                "QVL_BATCH_MAX, echo 8, qwen-vl and your own engines 1)")
    batch_max: int = Field(8, ge=1, description="transformers engine: most conversations answered in one batch")
    batch_wait_ms: float = Field(10.0, ge=0, description="transformers engine: how long an idle model waits for "
                                                         "more turns to batch with the first")
    cpu_threads: int = Field(0, ge=0, description="transformers engine on the CPU: threads the model computes "
                                                  "with (0: every core but one, left to the frontend, Redis "
                                                  "and the database)")
    user_max_pending: int = Field(3, ge=0, description="turns one person may have queued or running at once "
                                                       "(0: no cap); more are refused with a short reply")
    space_max_pending: int = Field(32, ge=0, description="turns one server or group may have queued or running "
                                                         "at once (0: no cap)")
    text_max_chars: int = Field(8000, ge=1, description="longest message text accepted, in characters "
                                                       "(a longer one is refused at the door)")

    rate_limit_turns: int = Field(10, ge=0, description="turns one user may start per window (0: no limit)")
    rate_limit_window_s: int = Field(60, ge=1, description="the rate limit's window, in seconds")
    fetch_timeout_s: float = Field(10.0, description="longest time to fetch a picture from a link")

    discord_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DISCORD_TOKEN", "QVL_DISCORD_TOKEN"),
        description="the Discord bot's token; set it and `qvl up` starts the Discord frontend")
    discord_allowed_guilds: Ids = Field(frozenset(), description="comma-separated server ids the bot serves (empty: any)")
    discord_allowed_channels: Ids = Field(frozenset(), description="comma-separated channel ids it answers in (empty: any)")
    discord_allowed_roles: Ids = Field(frozenset(), description="comma-separated role ids a member needs (empty: none)")
    discord_trigger: str = Field("", description="a prefix that also makes the bot answer, e.g. '!q'")
    discord_stream: bool = Field(False, description="edit a reply as the answer is written (at most once a second)")
    discord_queue_notice_s: float = Field(3.0, description="show the queue position after waiting this long")

    wechat_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("WECHATY_PUPPET_SERVICE_ENDPOINT", "QVL_WECHAT_ENDPOINT"),
        description="host:port of the Wechaty puppet service; set it and `qvl up` starts WeChat")
    wechat_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("WECHATY_PUPPET_SERVICE_TOKEN", "QVL_WECHAT_TOKEN"),
        description="the puppet service's token")
    wechat_trigger: str = Field("", description="a prefix that also makes the bot answer in rooms, e.g. '/q'")
    wechat_private: bool = Field(True, description="answer every message in private chats")
    wechat_rooms: Ids = Field(frozenset(), description="comma-separated room ids the bot serves (empty: any)")
    wechat_admins: Ids = Field(frozenset(), description="comma-separated contact ids allowed admin commands")
    wechat_scope: Scope = Field(Scope.USER, description="user (per user in a room) or shared (one per room)")
    wechat_picture_window_s: float = Field(180, description="a picture joins its sender's next question within this")

    wecom_bot_id: str | None = Field(
        None, validation_alias=AliasChoices("WECOM_BOT_ID", "QVL_WECOM_BOT_ID"),
        description="the WeCom AI bot's id (admin console); with the secret, `qvl up` starts WeCom")
    wecom_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("WECOM_BOT_SECRET", "QVL_WECOM_SECRET"),
        description="the WeCom AI bot's secret for its long connection")
    wecom_ws_url: str = Field("wss://openws.work.weixin.qq.com", description="WeCom's long-connection address")
    wecom_ca_file: Path | None = Field(None, description="PEM certificates to trust besides the usual roots for "
                                                         "the long connection and picture downloads (a private gateway)")
    wecom_scope: Scope = Field(Scope.USER, description="user (per user in a group) or shared (one per group); "
                                                       "a group's admins can switch it with /scope")
    wecom_groups: Ids = Field(frozenset(), description="comma-separated group chat ids the bot serves (empty: any)")
    wecom_admins: Ids = Field(frozenset(), description="comma-separated user ids allowed admin commands (/scope)")
    wecom_private: bool = Field(True, description="answer every message in direct chats")
    wecom_picture_window_s: float = Field(180, description="a picture joins its sender's next question within this")
    wecom_stream_window_s: float = Field(330, gt=0, description="a streamed reply must end this soon after the question "
                                                               "(WeCom allows 6 minutes); later ones are sent anew")
    wecom_stream_interval_s: float = Field(1.0, ge=0, description="least time between updates of a streamed reply")
    wecom_heartbeat_s: float = Field(30, gt=0, description="how often the long connection is pinged")

    turn_timeout_s: int = Field(1800, description="a turn unacknowledged this long after a worker died is redone")
    heartbeat_s: float = Field(2.0, gt=0, description="a running turn's worker records that it is alive this often")
    worker_lost_s: float = Field(15.0, gt=0, description="a running turn whose heartbeat is this old is redone "
                                                         "(its worker is gone)")
    max_attempts: int = Field(3, ge=1, description="a turn whose workers died this many times fails for good")
    redispatch_s: float = Field(5.0, gt=0, description="a waiting turn whose queue message is gone is sent "
                                                       "again after this long")
    reconcile_interval_s: float = Field(5.0, gt=0, description="how often a worker checks SQL for lost turns")
    delivery_lease_s: float = Field(60.0, gt=0, description="a reply a frontend took but did not acknowledge "
                                                            "is offered again after this long")
    stream_interval_s: float = Field(0.5, description="least time between streamed partial answers")

    web_enabled: bool = Field(True, description="`qvl up` also serves the web page and the OpenAI-compatible API")
    web_host: str = Field("127.0.0.1", description="address the web frontend listens on (beyond loopback only "
                                                   "once an API key exists: qvl keys create NAME)")
    web_port: int = Field(8000, ge=0, le=65535, description="port the web frontend listens on")
    web_secret: SecretStr | None = Field(None, description="signs login sessions and picture links; default: "
                                                           "a random one kept in data_dir/web.secret")

    @field_validator("discord_allowed_guilds", "discord_allowed_channels", "discord_allowed_roles",
                     "wechat_rooms", "wechat_admins", "wecom_groups", "wecom_admins", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value in set(EngineKind) or ":" in value:
            return value
        names = ", ".join(e.value for e in EngineKind)
        raise ValueError(f"unknown engine {value!r}: use {names} or package.module:Class")

    @field_validator("wechat_scope", "wecom_scope", mode="before")
    @classmethod
    def _scope(cls, value: object) -> object:
        return Scope.parse(value) or value if isinstance(value, str) else value

    def resolved_database_url(self) -> str:
        """The database URL in force: ``DATABASE_URL`` or SQLite under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'qvl.sqlite3'}"

    def as_env(self) -> dict[str, str]:
        """Environment variables that give a child process exactly these settings."""
        env = {f"QVL_{name.upper()}": _env_value(value) for name, value in self.model_dump().items()
               if value is not None and name not in ("database_url", "redis_url", "discord_token", "wechat_token",
                                                     "openai_api_key", "web_secret", "wecom_secret")}
        for name in ("discord_token", "wechat_token", "openai_api_key", "web_secret", "wecom_secret"):
            secret = getattr(self, name)
            if secret is not None:
                env[f"QVL_{name.upper()}"] = secret.get_secret_value()
        env["DATABASE_URL"] = self.resolved_database_url()
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env

    @property
    def queue(self) -> str:
        return f"{self.namespace}.turns"


def _env_value(value: object) -> str:
    if isinstance(value, frozenset | set):
        return ",".join(sorted(value))
    return str(value)
