// The login and registration pages: remember, in this browser, whether the person said it is a
// shared or public computer, so that logging out proposes to remove the history it keeps
// (views/devices.js, docs/client.md "Logging out"). Per account: `chat.shared.<phone>`.

const form = document.querySelector("form[method=post]");
const box = document.getElementById("shared-computer");

form?.addEventListener("submit", () => {
  const phone = form.elements.phone?.value.trim();
  if (!box || !/^[0-9]{10,15}$/.test(phone || "")) return;
  try {
    localStorage.setItem(`chat.shared.${phone}`, box.checked ? "1" : "0");
  } catch { /* storage disabled: logging out proposes to keep */ }
});
