// Calls to the director's API: JSON in, JSON out, one error type.
//
// Every failure becomes an ApiError whose message can be shown as it is:
// the director's own {"error": ...} text, or a plain sentence when the
// director could not be reached. A 401 on any call but a login means the
// login cookie expired or was revoked: the app is told (event
// "dcvix:expired") and goes back to the login screen, once.

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

const UNREACHABLE = "The director cannot be reached. Check your connection and try again.";

function isLogin(path) {
  return path === "/v1/user/login" || path === "/v1/admin/login";
}

async function readError(response) {
  let message = `The director answered ${response.status}.`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") {
      message = body.error;
    }
  } catch {
    // Not JSON: keep the generic sentence.
  }
  const header = response.headers.get("Retry-After");
  const retryAfter = header && /^\d+$/.test(header) ? Number(header) : null;
  return new ApiError(response.status, message, retryAfter);
}

// One request; resolves to the decoded JSON body (or null when empty).
export async function request(method, path, body = undefined) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, UNREACHABLE);
  }
  if (!response.ok) {
    const error = await readError(response);
    if (error.status === 401 && !isLogin(path)) {
      window.dispatchEvent(new CustomEvent("dcvix:expired"));
    }
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => request("GET", path);
export const post = (path, body = {}) => request("POST", path, body);
export const del = (path) => request("DELETE", path);

// A query string from an object, skipping empty values.
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") {
      search.set(key, String(value));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
