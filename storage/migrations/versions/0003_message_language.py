"""The asker's language on each message, so that errors are stored in it; one scope
vocabulary and one conversation-key form for every platform.

WeChat's conversation keys ``room:R:u:U`` and ``room:R`` become ``gR:cR:uU`` and
``gR:cR`` (the form every platform now shares), and a space's scope ``channel`` or
``room`` becomes ``shared``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("language", sa.String(8), nullable=True))
    bind = op.get_bind()
    conversations = sa.table("conversations", sa.column("id", sa.Integer), sa.column("platform", sa.String),
                             sa.column("scope_key", sa.String))
    rows = bind.execute(sa.select(conversations.c.id, conversations.c.scope_key)
                        .where(conversations.c.platform == "wechat",
                               conversations.c.scope_key.like("room:%"))).all()
    for id_, key in rows:
        room, _, user = key[len("room:"):].partition(":u:")
        new = f"g{room}:c{room}:u{user}" if user else f"g{room}:c{room}"
        bind.execute(sa.update(conversations).where(conversations.c.id == id_).values(scope_key=new))
    spaces = sa.table("space_settings", sa.column("id", sa.Integer), sa.column("values", sa.JSON))
    for id_, values in bind.execute(sa.select(spaces.c.id, spaces.c["values"])).all():
        if isinstance(values, dict) and values.get("scope") in ("channel", "room"):
            bind.execute(sa.update(spaces).where(spaces.c.id == id_).values({"values": {**values, "scope": "shared"}}))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("language")
