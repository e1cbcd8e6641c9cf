/* chatbuffer pages: the few DOM helpers the inspector and the playground share. Text always goes
   in with textContent (it can be customer input), never as HTML. */
'use strict';

window.chatbufferPage = (() => {
  const $ = (id) => document.getElementById(id);

  /** Build an element: el('div', {class: 'x', text: 'y', data: {a: 1}, on: {click}}, ...children). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = String(value);
      else if (key === 'data') for (const [k, v] of Object.entries(value)) { if (v != null) node.dataset[k] = String(v); }
      else if (key === 'on') for (const [k, fn] of Object.entries(value)) node.addEventListener(k, fn);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Postgres sends microseconds ("…:43.89114+00:00"); keep milliseconds so every browser parses it. */
  function parseTime(iso) {
    if (!iso) return NaN;
    return Date.parse(String(iso).replace(/\.(\d+)/, (_, f) => '.' + (f + '00').slice(0, 3)));
  }

  return { $, el, parseTime };
})();
