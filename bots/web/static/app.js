// qvl's page: no framework, no build step, nothing fetched from the internet.
"use strict";

// Tableau 10, picked per label in the order labels first appear: as worker/grounding/draw.py draws.
const PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];

const WORDS = {
  en: {
    login_intro: "Sign in with an API key (qvl keys create NAME), or open the login link qvl up printed.",
    login_placeholder: "qvl-…", login_button: "Sign in", login_bad: "That key is unknown or revoked.",
    new_chat: "+ New conversation", logout: "Sign out", reset: "/reset", send: "Send", attach: "Add pictures",
    ask_placeholder: "Ask about your pictures… (Enter to send, Shift+Enter for a new line)",
    drop_hint: "Drop, paste or pick pictures (PNG, JPEG, WebP, GIF).", drop_here: "Drop pictures here",
    queued: "Queued: position {n}", running: "Thinking…", no_worker: "No worker is running: your question waits until one starts.",
    download: "Download the annotated picture", untitled: "New conversation", failed: "Could not reach qvl: {e}",
    remove: "Remove",
  },
  zh: {
    login_intro: "请输入 API 密钥（qvl keys create 名称），或打开 qvl up 打印的登录链接。",
    login_placeholder: "qvl-…", login_button: "登录", login_bad: "密钥无效或已被撤销。",
    new_chat: "+ 新对话", logout: "退出登录", reset: "重置", send: "发送", attach: "添加图片",
    ask_placeholder: "就图片提问…（回车发送，Shift+回车换行）",
    drop_hint: "拖入、粘贴或选择图片（PNG、JPEG、WebP、GIF）。", drop_here: "将图片拖到这里",
    queued: "排队中：第 {n} 位", running: "思考中…", no_worker: "当前没有运行中的 worker：问题会等到有 worker 启动。",
    download: "下载标注后的图片", untitled: "新对话", failed: "无法连接 qvl：{e}", remove: "移除",
  },
};
const LANG = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
const t = (key, values = {}) => (WORDS[LANG][key] || WORDS.en[key]).replace(/\{(\w+)\}/g, (_, k) => values[k]);
const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child != null) node.append(child);
  return node;
};

const state = { token: localStorage.getItem("qvl.token"), conversation: localStorage.getItem("qvl.conversation"),
  pending: [], busy: false };

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { signOut(); throw new Error(t("login_bad")); }
  return response;
}

async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      if (line) yield JSON.parse(line);
    }
  }
}

// --- signing in ----------------------------------------------------------------------------

function signOut() {
  localStorage.removeItem("qvl.token");
  state.token = null;
  showLogin();
}

function showLogin(message = "") {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

async function signIn(token) {
  state.token = token;
  const response = await fetch("/api/me", { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) { state.token = null; showLogin(t("login_bad")); return false; }
  localStorage.setItem("qvl.token", token);
  await loadConversations();
  await openConversation(state.conversation);
  $("login").hidden = true;
  $("app").hidden = false;  // once the conversation is there: nothing sent now is cleared by its loading
  return true;
}

// --- conversations ------------------------------------------------------------------------

async function loadConversations() {
  const list = await (await api("/api/conversations")).json();
  const nav = $("conversations");
  nav.replaceChildren(...list.map((c) => {
    const link = el("a", { href: `#${c.id}`, textContent: c.title || t("untitled"), title: c.title || "" });
    link.dataset.id = c.id;
    link.classList.toggle("current", c.id === state.conversation);
    link.onclick = (event) => { event.preventDefault(); openConversation(c.id); closeMenu(); };
    return link;
  }));
  if (!state.conversation && list.length) state.conversation = list[0].id;
  return list;
}

async function openConversation(id) {
  state.conversation = id || newId();
  localStorage.setItem("qvl.conversation", state.conversation);
  for (const link of $("conversations").children) link.classList.toggle("current", link.dataset.id === state.conversation);
  const box = $("messages");
  box.replaceChildren();
  $("title").textContent = "qvl";
  if (!id) return;
  const entries = await (await api(`/api/conversations/${state.conversation}`)).json();
  let waiting = null;
  const first = entries.find((e) => e.role === "user" && e.text);
  $("title").textContent = first ? first.text : "qvl";
  for (const entry of entries) {
    if (entry.role === "user") {
      box.append(userBubble(entry.text, entry.pictures.map((p) => p.url)));
      if (entry.state === "queued" || entry.state === "running") waiting = entry.job_id;
      else if (entry.state === "failed") finish(assistantBubble(), { text: entry.error || "", error: true });
    } else {
      finish(assistantBubble(), { text: entry.text, error: false, boxes: flatBoxes(entry),
        originals: entry.originals, annotated: entry.annotated });
    }
  }
  if (waiting) follow(assistantBubble(), api(`/api/jobs/${waiting}/events`));
  scrollDown();
}

function flatBoxes(entry) {
  const out = [];
  for (const group of entry.boxes) for (const b of group.boxes) out.push({ label: b.label, box: b.box, image: group.image });
  return out;
}

// --- messages -----------------------------------------------------------------------------

function userBubble(text, urls) {
  const bubble = el("div", { className: "msg user" });
  for (const url of urls) bubble.append(el("img", { className: "picture", src: url, alt: "", onload: scrollDown }));
  if (text) bubble.append(el("div", { className: "text", textContent: text }));
  return bubble;
}

function assistantBubble() {
  const bubble = el("div", { className: "msg assistant" },
    el("div", { className: "status" }), el("div", { className: "text" }));
  $("messages").append(bubble);
  scrollDown();
  return bubble;
}

function scrollDown() { const box = $("messages"); box.scrollTop = box.scrollHeight; }

function finish(bubble, answer) {
  bubble.querySelector(".status").textContent = "";
  bubble.querySelector(".text").textContent = answer.text || "";
  bubble.classList.toggle("error", !!answer.error);
  const groups = new Map();
  for (const b of answer.boxes || []) {
    if (!groups.has(b.image)) groups.set(b.image, []);
    groups.get(b.image).push(b);
  }
  for (const [sha, boxes] of groups) {
    const original = answer.originals && answer.originals[sha];
    if (!original) continue;
    const annotated = answer.annotated && answer.annotated[sha];
    bubble.append(boxedFigure(typeof original === "string" ? original : original.url, boxes,
      typeof annotated === "string" ? annotated : annotated && annotated.url));
  }
  scrollDown();
}

function boxedFigure(url, boxes, download) {
  const stage = el("div", { className: "stage" });
  const image = el("img", { src: url, alt: "" });
  stage.append(image);
  const colours = new Map();
  for (const b of boxes) if (!colours.has(b.label)) colours.set(b.label, PALETTE[colours.size % PALETTE.length]);
  const legend = el("ul", { className: "legend" });
  const items = [];
  const place = () => {
    const w = image.naturalWidth, h = image.naturalHeight;
    boxes.forEach((b, i) => {
      const [x1, y1, x2, y2] = b.box;
      Object.assign(items[i].box.style, { left: `${(100 * x1) / w}%`, top: `${(100 * y1) / h}%`,
        width: `${(100 * (x2 - x1)) / w}%`, height: `${(100 * (y2 - y1)) / h}%` });
      items[i].box.classList.toggle("top-edge", y1 < 0.06 * h);
      items[i].box.hidden = false;
    });
  };
  boxes.forEach((b) => {
    const colour = `rgb(${colours.get(b.label).join(",")})`;
    const box = el("div", { className: "box", hidden: true, title: b.label || "" }, el("span", { textContent: b.label || "" }));
    box.style.setProperty("--c", colour);
    box.dataset.label = b.label || "";
    const item = el("li", { textContent: `${b.label || "?"} [${b.box.join(", ")}]` });
    item.style.setProperty("--c", colour);
    const pair = { box, item };
    items.push(pair);
    const on = () => { stage.classList.add("focus"); box.classList.add("hot"); item.classList.add("hot"); };
    const off = () => { stage.classList.remove("focus"); box.classList.remove("hot"); item.classList.remove("hot"); };
    for (const node of [box, item]) { node.onmouseenter = on; node.onmouseleave = off; }
    stage.append(box);
    legend.append(item);
  });
  if (image.complete && image.naturalWidth) place(); else image.addEventListener("load", () => { place(); scrollDown(); });
  const figure = el("figure", { className: "boxed" }, stage, legend);
  if (download) figure.append(el("figcaption", {}, el("a", { href: `${download}&download=1`, textContent: t("download"), download: "" })));
  return figure;
}

async function follow(bubble, responsePromise) {
  const status = bubble.querySelector(".status");
  const text = bubble.querySelector(".text");
  let idle = false;
  try {
    const response = await responsePromise;
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      finish(bubble, { text: (body.error && body.error.message) || response.statusText, error: true });
      return;
    }
    for await (const event of lines(response)) {
      if (event.type === "accepted") { idle = event.workers === 0; if (idle) status.textContent = t("no_worker"); }
      else if (event.type === "queued") status.textContent = t("queued", { n: event.position }) + (idle ? ` · ${t("no_worker")}` : "");
      else if (event.type === "running") status.textContent = t("running");
      else if (event.type === "text") { status.textContent = ""; text.textContent = event.text; scrollDown(); }
      else if (event.type === "reply") finish(bubble, event);
      else if (event.type === "done") {
        const annotated = {};
        for (const a of event.annotated || []) annotated[a.image] = a.url;
        finish(bubble, { text: event.text, error: event.error, boxes: event.boxes, originals: event.originals, annotated });
      }
    }
  } catch (error) {
    finish(bubble, { text: t("failed", { e: error.message }), error: true });
  }
}

// --- sending ------------------------------------------------------------------------------

async function send(text) {
  if (state.busy) return;
  const pictures = state.pending.splice(0);
  renderAttachments();
  if (!text.trim() && !pictures.length) return;
  state.busy = true;
  $("send").disabled = true;
  const fresh = !$("messages").querySelector(".msg.user");
  if (fresh && text.trim() && !text.trim().startsWith("/")) $("title").textContent = text;
  if (text.trim() !== "/reset" && text.trim() !== "重置") $("messages").append(userBubble(text, pictures));
  const bubble = assistantBubble();
  const body = { conversation: state.conversation, message_id: newId(), text, images: pictures, language: LANG };
  const request = api("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  try {
    await follow(bubble, request);
  } finally {
    state.busy = false;
    $("send").disabled = false;
    if (fresh) loadConversations();
  }
}

function readPicture(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  for (const file of files) if (file.type.startsWith("image/")) state.pending.push(await readPicture(file));
  renderAttachments();
}

function renderAttachments() {
  $("attachments").replaceChildren(...state.pending.map((url, i) => {
    const remove = el("button", { type: "button", textContent: "×", title: t("remove") });
    remove.onclick = () => { state.pending.splice(i, 1); renderAttachments(); };
    return el("figure", {}, el("img", { src: url, alt: "" }), remove);
  }));
}

function closeMenu() { $("app").classList.remove("menu-open"); }

// --- wiring -------------------------------------------------------------------------------

function wire() {
  document.documentElement.lang = LANG === "zh" ? "zh-CN" : "en";
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = t(node.dataset.t);
  for (const node of document.querySelectorAll("[data-ph]")) node.placeholder = t(node.dataset.ph);
  for (const node of document.querySelectorAll("[data-title]")) node.title = t(node.dataset.title);
  $("login-form").onsubmit = (event) => { event.preventDefault(); signIn($("login-key").value.trim()); };
  $("logout").onclick = signOut;
  $("new-chat").onclick = () => { openConversation(null); closeMenu(); $("text").focus(); };
  $("menu").onclick = () => $("app").classList.toggle("menu-open");
  $("reset").onclick = () => send(LANG === "zh" ? "重置" : "/reset");
  $("file").onchange = (event) => { addFiles(event.target.files); event.target.value = ""; };
  $("composer").onsubmit = (event) => { event.preventDefault(); const text = $("text").value; $("text").value = ""; send(text); };
  $("text").onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); $("composer").requestSubmit(); }
  };
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData.files || []);
    if (files.length) { event.preventDefault(); addFiles(files); }
  });
  const main = document.querySelector(".main");
  let depth = 0;
  main.addEventListener("dragenter", (event) => { event.preventDefault(); depth++; $("drop").hidden = false; });
  main.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop").hidden = true; } });
  main.addEventListener("dragover", (event) => event.preventDefault());
  main.addEventListener("drop", (event) => {
    event.preventDefault(); depth = 0; $("drop").hidden = true;
    addFiles(Array.from(event.dataTransfer.files || []));
  });
}

wire();
const fromLink = new URLSearchParams(location.hash.slice(1)).get("session");
if (fromLink) history.replaceState(null, "", "/");
if (fromLink || state.token) signIn(fromLink || state.token); else showLogin();
