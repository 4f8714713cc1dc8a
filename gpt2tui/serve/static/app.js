// The chat page: conversations in the sidebar (the chat app's own history, through /api/conversations), the open one
// in the middle, replies streamed from /v1/chat/completions. It saves as the terminal app does: the user's message,
// then the reply empty and unfinished, then its text as it grows and, at the end, why it ended.

import { ApiError, call, storeKey, storedKey, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const SAVE_INTERVAL = 1000; // ms between saves of a streaming reply: a closed tab loses at most this much of it
const FINISH_NOTES = {
  cancelled: "stopped",
  max_tokens: "cut off: the reply reached its length limit",
  context_full: "cut off: the context window is full",
  error: "ended by an error",
};
// The API's finish reasons in the chat app's words, which the history keeps.
const FINISH_REASONS = { stop: "stop", length: "max_tokens" };

const $ = (id) => document.getElementById(id);
const state = {
  conversation: null, // the open conversation as the server sent it; null: a new one, made with the first message
  messages: [], // [{role, content, finish_reason}] of the open conversation (the path the apps show)
  history: true, // false when the server keeps no history (reachable by others without a key)
  controller: null, // the reply streaming now, to stop it
};

// -- the key ---------------------------------------------------------------------------------------------------------

function askForKey(message) {
  const dialog = $("key-dialog");
  $("key-error").textContent = message;
  $("key").value = "";
  dialog.oncancel = (event) => event.preventDefault(); // Esc would leave the page with no key and nothing to do
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => {
    $("key-form").onsubmit = (event) => {
      event.preventDefault();
      storeKey($("key").value.trim());
      dialog.close();
      resolve();
    };
  });
}

// Runs `action`, asking for the key whenever the server says it is missing or wrong.
async function withKey(action) {
  for (;;) {
    try {
      return await action();
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) throw e;
      const message = storedKey()
        ? "That key was not accepted; type the key the server was started with (--api-key)."
        : "This server needs its API key (--api-key). It is kept in this tab only, until the tab closes.";
      await askForKey(message);
    }
  }
}

// -- showing ---------------------------------------------------------------------------------------------------------

function say(text, kind = "error") {
  const status = $("status");
  status.textContent = text;
  status.dataset.kind = kind;
}

function messageView(message) {
  const view = document.createElement("article");
  view.className = `message ${message.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : $("model").textContent || "gpt2tui";
  const body = document.createElement("div");
  body.className = "body";
  const note = document.createElement("div");
  note.className = "note";
  view.append(who, body, note);
  fill(view, message);
  return view;
}

function fill(view, message) {
  const body = view.querySelector(".body");
  if (message.role === "assistant") body.innerHTML = renderMarkdown(message.content); // escaped by the renderer
  else body.textContent = message.content; // the user's text exactly as typed, as the terminal app shows it
  const reason = message.finish_reason;
  view.querySelector(".note").textContent = FINISH_NOTES[reason] || "";
  view.classList.toggle("stopped", reason === "cancelled");
  view.dataset.finish = reason || "";
}

function showMessages() {
  const list = $("messages");
  list.replaceChildren(...state.messages.filter((m) => m.role !== "system").map(messageView));
  if (!state.messages.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Type a message below and press Enter.";
    list.append(empty);
  }
  list.scrollTop = list.scrollHeight;
}

function showTitle() {
  const c = state.conversation;
  $("title").textContent = c ? c.title : "New chat";
  document.title = c ? `${c.title} — gpt2tui` : "gpt2tui";
  $("rename").hidden = $("delete").hidden = !c;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  for (const id of ["new-chat", "rename", "delete"]) $(id).disabled = busy;
  $("conversations").classList.toggle("busy", busy);
}

async function refreshList() {
  if (!state.history) return;
  const q = $("search").value.trim();
  let found;
  try {
    found = await withKey(() => call("GET", `/api/conversations${q ? `?q=${encodeURIComponent(q)}` : ""}`));
  } catch (e) {
    if (e.code === "history_off") return historyOff(e.message);
    return say(e.message);
  }
  const open = state.conversation && state.conversation.id;
  $("conversations").replaceChildren(...found.conversations.map((c) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = c.title;
    button.title = `${c.title} (${c.model || "unknown model"})`;
    button.dataset.id = c.id;
    if (c.id === open) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openConversation(c.id));
    item.append(button);
    return item;
  }));
}

function historyOff(message) {
  state.history = false;
  const note = $("history-note");
  note.textContent = `Not saved: ${message}`;
  note.hidden = false;
  $("search").hidden = true;
}

// -- conversations ---------------------------------------------------------------------------------------------------

async function openConversation(id) {
  if (state.controller) return;
  let c;
  try {
    c = await withKey(() => call("GET", `/api/conversations/${id}`));
  } catch (e) {
    if (e.code === "history_off") return historyOff(e.message);
    if (e.status === 404) {
      history.replaceState(null, "", "/");
      await refreshList();
    }
    return say(e.message);
  }
  state.conversation = c;
  state.messages = c.messages.map(({ role, content, finish_reason }) => ({ role, content, finish_reason }));
  history.replaceState(null, "", `#${c.id}`); // a reload opens it again
  say(c.writable ? "" : "This conversation is open in gpt2tui in a terminal, which writes it: it is read-only " +
    "here. Start a new chat to write.", "warning");
  showTitle();
  showMessages();
  await refreshList();
}

function newChat() {
  if (state.controller) return;
  state.conversation = null;
  state.messages = [];
  history.replaceState(null, "", "/");
  say("");
  showTitle();
  showMessages();
  refreshList();
  $("prompt").focus();
}

async function rename() {
  const c = state.conversation;
  const title = c && window.prompt("Rename this conversation", c.title);
  if (!title || !title.trim()) return;
  try {
    const renamed = await withKey(() => call("PATCH", `/api/conversations/${c.id}`, { title }));
    c.title = renamed.title;
    showTitle();
    await refreshList();
  } catch (e) {
    say(e.message);
  }
}

async function remove() {
  const c = state.conversation;
  if (!c || !window.confirm(`Delete “${c.title}”? This cannot be undone.`)) return;
  try {
    await withKey(() => call("DELETE", `/api/conversations/${c.id}`));
  } catch (e) {
    return say(e.message);
  }
  newChat();
}

// -- sending and streaming -------------------------------------------------------------------------------------------

// The user's message and the empty reply, saved before anything is generated; the ids of both (null: not saved).
async function saveTurn(text) {
  if (!state.history) return null;
  const path = "/api/conversations";
  if (!state.conversation) {
    state.conversation = await withKey(() => call("POST", path, { title: text }));
    history.replaceState(null, "", `#${state.conversation.id}`);
    showTitle();
  }
  const id = state.conversation.id;
  await withKey(() => call("POST", `${path}/${id}/messages`, { role: "user", content: text }));
  const reply = await withKey(() => call("POST", `${path}/${id}/messages`, { role: "assistant", content: "" }));
  return `${path}/${id}/messages/${reply.id}`;
}

function request(messages) {
  const s = state.conversation && state.conversation.sampling;
  const body = { messages: messages.map(({ role, content }) => ({ role, content })) };
  if (s) {
    // The conversation's own settings, as the terminal app samples it (top-k and the repetition penalty have no
    // field in the API). Without history the server's defaults apply.
    if (s.system_prompt) body.messages.unshift({ role: "system", content: s.system_prompt });
    body.temperature = s.temperature;
    if (s.top_p !== null) body.top_p = s.top_p;
    if (s.seed !== null) body.seed = s.seed;
  }
  return body;
}

async function send() {
  const input = $("prompt");
  const text = input.value.trim();
  if (!text || state.controller) return;
  if (state.conversation && !state.conversation.writable) {
    return say("This conversation is open in gpt2tui in a terminal: nothing was sent. Start a new chat to write.");
  }
  const last = state.messages[state.messages.length - 1];
  // Busy from here, not from the first token: a second Enter while the turn is being saved sends nothing.
  state.controller = new AbortController();
  setBusy(true);
  let saveAt = null;
  try {
    saveAt = await saveTurn(text);
  } catch (e) {
    if (e.code === "history_off") {
      historyOff(e.message); // the chat goes on, unsaved, and the sidebar says so
    } else {
      state.controller = null;
      setBusy(false);
      // The text stays in the box: nothing was sent.
      return say(e.code === "conversation_in_use" ? e.message : `Nothing was sent: ${e.message}`);
    }
  }
  input.value = "";
  say("");
  if (last && last.role === "user") state.messages.push({ role: "assistant", content: "", finish_reason: "cancelled" });
  state.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "", finish_reason: null };
  const messages = state.messages.slice();
  state.messages.push(reply);
  showMessages();
  const view = $("messages").lastElementChild;
  view.classList.add("streaming");
  await stream(messages, reply, view, saveAt);
  await refreshList();
}

// Streams into `reply` (shown in `view`, saved at `saveAt`) until it ends or `state.controller` is aborted.
async function stream(messages, reply, view, saveAt) {
  const controller = state.controller;
  let saving = Promise.resolve();
  let savedAt = Date.now();
  let saveError = null;
  const save = () => {
    if (!saveAt) return;
    const body = { content: reply.content, finish_reason: reply.finish_reason };
    saving = saving.then(() => withKey(() => call("PATCH", saveAt, body))).catch((e) => {
      saveError = e;
    });
  };
  let drawn = false;
  const draw = () => {
    if (drawn) return;
    drawn = true;
    requestAnimationFrame(() => {
      drawn = false;
      fill(view, reply);
      const list = $("messages");
      list.scrollTop = list.scrollHeight;
    });
  };
  try {
    for await (const chunk of streamChat(request(messages), controller.signal)) {
      for (const choice of chunk.choices || []) {
        reply.content += (choice.delta && choice.delta.content) || "";
        if (choice.finish_reason) reply.finish_reason = FINISH_REASONS[choice.finish_reason] || "stop";
      }
      draw();
      if (Date.now() - savedAt >= SAVE_INTERVAL) {
        savedAt = Date.now();
        save();
      }
    }
    reply.finish_reason = reply.finish_reason || "stop";
  } catch (e) {
    if (e.name === "AbortError") {
      reply.finish_reason = "cancelled";
    } else if (e.code === "context_length_exceeded") {
      // The terminal app drops the oldest turns to fit; the API refuses instead, and the page says what to do.
      reply.finish_reason = "context_full";
      say(`This conversation no longer fits the model's context window: start a new chat to go on. (${e.message})`);
    } else {
      reply.finish_reason = "error";
      say(e.message);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    view.classList.remove("streaming");
    fill(view, reply);
    save();
    await saving;
    if (saveError) say(`The reply was not saved: ${saveError.message}`);
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

// -- start -----------------------------------------------------------------------------------------------------------

async function start() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) stop();
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("rename").addEventListener("click", rename);
  $("delete").addEventListener("click", remove);
  let searching;
  $("search").addEventListener("input", () => {
    clearTimeout(searching);
    searching = setTimeout(refreshList, 200);
  });
  try {
    const models = await withKey(() => call("GET", "/v1/models"));
    $("model").textContent = models.data.length ? models.data[0].id : "";
  } catch (e) {
    say(e.message);
  }
  showTitle();
  showMessages();
  const id = Number(location.hash.slice(1));
  if (Number.isInteger(id) && id > 0) await openConversation(id);
  else await refreshList();
  document.body.dataset.ready = "true"; // for the tests: the page has finished starting
  $("prompt").focus();
}

start();
