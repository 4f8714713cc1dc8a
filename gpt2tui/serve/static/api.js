// The page's calls to its server: JSON requests with the API key, and a chat completion streamed as Server-Sent
// Events read from fetch's ReadableStream (EventSource cannot POST, nor send a header).

// sessionStorage, not localStorage: the key is a secret, so it lives as long as the tab (a reload keeps it) and is
// gone when the tab closes, rather than staying on a disk that others may use; another tab asks once more.
const KEY_ITEM = "gpt2tui.apiKey";

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function storeKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = storedKey();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

// The server answers errors in OpenAI's shape, {"error": {"message", "code", ...}}: its message is the one to show.
async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON (a proxy's page): the status line says what there is to say
  }
  return new ApiError(response.status, message, code);
}

export async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the server cannot be reached (${e.message}); is gpt2tui serve still running?`);
  }
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Yields each chunk of a streamed chat completion; ends at "data: [DONE]". An error the server sends inside the
// stream (after the headers) is thrown as an ApiError. Aborting `signal` closes the connection, which the server takes
// as the client leaving: it cancels the reply before its next token.
export async function* streamChat(request, signal) {
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify({ ...request, stream: true }),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `the server cannot be reached (${e.message}); is gpt2tui serve still running?`);
  }
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue; // a comment or a keep-alive
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code || null);
      yield chunk;
    }
  }
}
