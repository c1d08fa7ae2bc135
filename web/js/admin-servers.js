// Placeholder until the screen is written (replaced in this same change).
import { h } from "./ui.js";

export function mount(container) {
  container.append(h("h1", {}, "admin-servers"));
}
