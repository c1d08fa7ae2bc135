// The login screen, for users and admins.
//
// The form calls exactly one route: /v1/admin/login when "Administrator" is
// ticked, else /v1/user/login. Trying one then the other would count a
// failure against the throttle and spend a one-time password.

import { ApiError, get, post } from "./api.js";
import { field, formatDuration, h, notice } from "./ui.js";

function explain(error) {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  switch (error.status) {
    case 0:
      return error.message;
    case 401:
      return "Wrong user name, password or one-time password.";
    case 429:
      return error.retryAfter
        ? `Too many failed logins. Try again in ${formatDuration(error.retryAfter)}.`
        : "Too many failed logins. Try again later.";
    case 503:
      return "The director is busy with other logins. Try again in a moment.";
    default:
      return error.message;
  }
}

export async function mount(container, context) {
  let otp = "none";
  try {
    otp = (await get("/v1/ui-config")).otp;
  } catch {
    // The form still works without it: the OTP field stays hidden.
  }
  const user = h("input", { name: "user", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const code = h("input", { name: "otp", inputmode: "numeric", autocomplete: "one-time-code", required: otp === "required" });
  const admin = h("input", { name: "admin", type: "checkbox" });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const messages = h("div", { class: "messages" });

  const form = h(
    "form",
    {
      class: "login",
      method: "post",
      "aria-labelledby": "login-title",
      onsubmit: async (event) => {
        event.preventDefault();
        submit.disabled = true;
        messages.replaceChildren();
        const route = admin.checked ? "/v1/admin/login" : "/v1/user/login";
        try {
          await post(route, { userID: user.value, password: password.value, otp: code.value });
          password.value = "";
          code.value = "";
          await context.loggedIn();
        } catch (error) {
          messages.replaceChildren(notice(explain(error)));
          password.select();
          password.focus();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("h1", { id: "login-title" }, "Log in to dcvix"),
    messages,
    field("User name", user),
    field("Password", password),
    otp === "none"
      ? null
      : field(
          otp === "required" ? "One-time password" : "One-time password (if you have one)",
          code,
        ),
    h("div", { class: "field checkbox" }, admin, h("label", { for: "login-admin" }, "Administrator")),
    submit,
  );
  admin.id = "login-admin";
  container.append(h("section", { class: "login-screen" }, form));
  user.focus();
}
