// The login and registration pages: remember, in this browser, whether the person said it is a
// shared or public computer, so that logging out proposes to remove the history it keeps
// (views/devices.js, docs/client.md "Logging out"). Per account: `chat.shared.<phone>`.
// The phone number is taken as people type it ("+44 7700 900123", issue 18, defect 4): it is
// sent as its digits (SPEC 1), and a number that is still not one is explained here, not sent.

import {normalisePhone} from "./state.js";

const form = document.querySelector("form[method=post]");
const box = document.getElementById("shared-computer");
const field = form?.elements.phone;

/** The error line under the phone field (role=alert), made on first use. */
function errorLine() {
  let line = document.getElementById("phone-error");
  if (!line) {
    line = document.createElement("p");
    line.id = "phone-error";
    line.className = "error";
    line.setAttribute("role", "alert");
    field.closest("label").after(line);
    field.setAttribute("aria-describedby", "phone-error");
  }
  return line;
}

field?.addEventListener("input", () => {
  field.removeAttribute("aria-invalid");
  document.getElementById("phone-error")?.remove();
});

form?.addEventListener("submit", (ev) => {
  if (!field) return;
  const {phone, error} = normalisePhone(field.value);
  if (error) {
    ev.preventDefault();  // the typed number stays in the box
    field.setAttribute("aria-invalid", "true");
    errorLine().textContent = error;
    field.focus();
    return;
  }
  field.value = phone;  // what the server takes: digits only
  try {
    localStorage.setItem(`chat.shared.${phone}`, box?.checked ? "1" : "0");
  } catch { /* storage disabled: logging out proposes to keep */ }
});
