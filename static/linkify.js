// Links in message text (issue 18): http and https addresses become <a> elements opening in a
// new tab, without the opener (rel="noopener noreferrer"); everything else stays text. Built
// with DOM nodes only: a message's text never goes through innerHTML.

// A candidate: the scheme and everything up to a space or a character that cannot end a link
// in running text. Trailing punctuation is trimmed below ("see https://x.org/a.").
const CANDIDATE = /\bhttps?:\/\/[^\s<>"'`]+/giu;
const TRAILING = /[.,;:!?'"»”’)\]}]+$/u;

/**
 * The nodes that show `text` with its links clickable: text nodes and
 * <a href rel="noopener noreferrer" target="_blank"> for each http/https address (checked with
 * the URL parser; a parenthesis is kept when the address opened one, as Wikipedia's do).
 */
export function linkify(text) {
  const nodes = [];
  let at = 0;
  for (const match of String(text).matchAll(CANDIDATE)) {
    let href = match[0];
    const trail = href.match(TRAILING);
    if (trail) {
      let cut = trail[0];
      // "(https://en.wikipedia.org/wiki/Foo_(bar))": the closing ")" belongs to the address.
      while (cut.startsWith(")") && count(href.slice(0, -cut.length), "(") > count(href.slice(0, -cut.length), ")")) {
        cut = cut.slice(1);
      }
      href = href.slice(0, href.length - cut.length);
    }
    const url = parse(href);
    if (!url) continue;
    if (match.index > at) nodes.push(document.createTextNode(text.slice(at, match.index)));
    const a = document.createElement("a");
    a.href = url.href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    a.textContent = href;
    nodes.push(a);
    at = match.index + href.length;
  }
  if (at < text.length || !nodes.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}

function count(text, ch) {
  return text.split(ch).length - 1;
}

/** The URL when `href` is a valid http(s) address with a host, else null. */
function parse(href) {
  try {
    const url = new URL(href);
    return (url.protocol === "http:" || url.protocol === "https:") && url.hostname ? url : null;
  } catch {
    return null;
  }
}
