"""A Slack message body (Block Kit, mrkdwn) as an HTML page that looks like Slack shows it.

Only for pictures and tests: headers, sections (text and fields), context, dividers and
images; attachments with their colour bar; mrkdwn links, mentions, *bold*, _italic_,
~strike~, `code`, > quotes and the emoji the default templates use. The headless browser
has no emoji font, so those few are drawn with CSS.
"""

from __future__ import annotations

import html
import re
from typing import Any

TOKEN = re.compile(r"<([^<>\n]*)>")
PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
EMOJI_CODE = re.compile(r":([a-z0-9_+-]+):")
# Slack's rules, simplified: a marker pair around text that does not start or end with a space.
INLINE = [
    (re.compile(r"`([^`\n]+)`"), "code"),
    (re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])"), "b"),
    (re.compile(r"(?<![\w_])_(?!\s)([^_\n]+?)(?<!\s)_(?![\w_])"), "i"),
    (re.compile(r"(?<![\w~])~(?!\s)([^~\n]+?)(?<!\s)~(?![\w~])"), "s"),
]
EMOJI = {
    "red_circle": '<span class="emoji dot" style="background:#dd2e44"></span>',
    "large_green_circle": '<span class="emoji dot" style="background:#78b159"></span>',
    "white_circle": '<span class="emoji dot" style="background:#e6e7e8"></span>',
    "x": '<span class="emoji cross">✖</span>',
    "white_check_mark": '<span class="emoji check">✔</span>',
}

STYLE = """
body { margin: 0; background: #fff; color: #1d1c1d;
       font: 15px/1.46668 Lato, "Helvetica Neue", Helvetica, "Liberation Sans", Arial, sans-serif; }
.channel { border-bottom: 1px solid #dddddd; padding: 14px 20px; font-weight: 900;
           font-size: 18px; }
.channel small { font-weight: 400; color: #616061; font-size: 13px; margin-left: 8px; }
.message { display: flex; gap: 8px; padding: 16px 20px; }
.avatar { flex: 0 0 36px; height: 36px; border-radius: 4px; background: #2eb67d; color: #fff;
          font-weight: 900; font-size: 15px; display: flex; align-items: center;
          justify-content: center; }
.content { flex: 1; min-width: 0; }
.sender { font-weight: 900; }
.app { background: rgba(29,28,29,.13); color: rgba(29,28,29,.7); font-size: 10px;
       font-weight: 700; padding: 1px 3px; border-radius: 2px; margin: 0 4px; vertical-align: 2px; }
.time { color: #616061; font-size: 12px; }
.header { font-weight: 900; font-size: 18px; line-height: 1.33; margin: 6px 0 4px; }
.section { margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 4px 16px; }
.context { color: #616061; font-size: 13px; margin: 6px 0; }
.divider { border: 0; border-top: 1px solid #dddddd; margin: 8px 0; }
.attachment { border-left: 4px solid #dddddd; border-radius: 4px 0 0 4px; padding: 2px 0 2px 12px;
              margin: 6px 0; }
a { color: #1264a3; text-decoration: none; }
b a { font-weight: 900; }
.mention { color: #1264a3; background: rgba(29,155,209,.1); border-radius: 3px; padding: 0 2px; }
blockquote { margin: 4px 0; padding-left: 12px; border-left: 4px solid #dddddd; }
code { font: 12px Monaco, Menlo, "DejaVu Sans Mono", monospace; color: #e01e5a;
       background: rgba(29,28,29,.04); border: 1px solid rgba(29,28,29,.13); border-radius: 3px;
       padding: 2px 3px; }
.emoji { display: inline-block; width: 1.1em; height: 1.1em; vertical-align: -0.2em; }
.emoji.dot { border-radius: 50%; transform: scale(.85); }
.emoji.cross { color: #dd2e44; text-align: center; }
.emoji.check { color: #fff; background: #78b159; border-radius: 3px; text-align: center;
               font-size: 0.9em; line-height: 1.2em; }
"""


def _unescape(escaped: str) -> str:
    """Slack's escaped text (&amp; &lt; &gt;) as it reads."""
    return escaped.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text(escaped: str) -> str:
    return html.escape(_unescape(escaped))


def _emoji(markup: str) -> str:
    return EMOJI_CODE.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), markup)


def _token(inner: str) -> str:
    """The HTML of one <...> of mrkdwn: a link, a mention, a channel."""
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return f'<span class="mention">@{_text(label or target[1:])}</span>'
    if target.startswith("#"):
        return f'<span class="mention">#{_text(label or target[1:])}</span>'
    if target.startswith("!subteam^"):
        shown = label or "@" + target.removeprefix("!subteam^")
        return f'<span class="mention">{_text(shown)}</span>'
    if target.startswith("!date^"):
        return _text(label)
    if target.startswith("!"):
        return f'<span class="mention">@{_text(target[1:])}</span>'
    return f'<a href="{_text(target)}">{_text(label or target)}</a>'


def mrkdwn(text: str) -> str:
    """Slack mrkdwn as HTML."""
    tokens: list[str] = []

    def hold(match: re.Match[str]) -> str:
        tokens.append(_token(match.group(1)))
        return f"\x00{len(tokens) - 1}\x00"

    out: list[str] = []
    quote: list[str] = []
    for line in text.split("\n"):
        # A quote is a literal ">" at the start of a line; one from build data arrives as &gt;.
        quoted = line.startswith(">")
        markup = _text(TOKEN.sub(hold, line[1:] if quoted else line))
        for pattern, tag in INLINE:
            markup = pattern.sub(rf"<{tag}>\1</{tag}>", markup)
        markup = _emoji(markup)
        markup = PLACEHOLDER.sub(lambda m: tokens[int(m.group(1))], markup)
        if quoted:
            quote.append(markup)
            continue
        if quote:
            out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
            quote = []
        out.append(markup + "\n")
    if quote:
        out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
    return "".join(out).removesuffix("\n")


def _text_object(text: dict[str, Any]) -> str:
    if text.get("type") == "mrkdwn":
        return mrkdwn(text["text"])
    plain = html.escape(text["text"])
    return _emoji(plain) if text.get("emoji", True) else plain


def _block(block: dict[str, Any]) -> str:
    kind = block["type"]
    if kind == "header":
        return f'<div class="header">{_text_object(block["text"])}</div>'
    if kind == "section":
        parts = []
        if "text" in block:
            parts.append(f'<div class="section">{_text_object(block["text"])}</div>')
        if "fields" in block:
            fields = "".join(
                f'<div class="section">{_text_object(f)}</div>' for f in block["fields"]
            )
            parts.append(f'<div class="fields">{fields}</div>')
        return "".join(parts)
    if kind == "context":
        elements = " ".join(
            _text_object(e) for e in block["elements"] if e["type"] in ("mrkdwn", "plain_text")
        )
        return f'<div class="context">{elements}</div>'
    if kind == "divider":
        return '<hr class="divider">'
    raise ValueError(f"a block this preview does not draw: {kind}")


def _attachment(attachment: dict[str, Any]) -> str:
    colour = attachment.get("color", "#dddddd")
    if re.fullmatch(r"[0-9a-fA-F]{6}", colour):
        colour = "#" + colour
    colour = {"good": "#2eb886", "warning": "#daa038", "danger": "#a30200"}.get(colour, colour)
    inner = "".join(_block(b) for b in attachment.get("blocks", []))
    if "text" in attachment:
        inner += f'<div class="section">{mrkdwn(attachment["text"])}</div>'
    return f'<div class="attachment" style="border-left-color:{html.escape(colour)}">{inner}</div>'


def page(message: dict[str, Any], channel: str, sender: str = "jobserv-bridge") -> str:
    """The whole page: a channel header and the message, as Slack shows it."""
    blocks = message.get("blocks")
    body = (
        "".join(_block(b) for b in blocks)
        if blocks
        else f'<div class="section">{mrkdwn(message.get("text", ""))}</div>'
    )
    body += "".join(_attachment(a) for a in message.get("attachments", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(channel)}</title>
<style>{STYLE}</style></head>
<body>
<div class="channel"># {html.escape(channel)}<small>CI alerts from JobServ</small></div>
<div class="message">
  <div class="avatar">JB</div>
  <div class="content">
    <div><span class="sender">{html.escape(sender)}</span><span class="app">APP</span>
      <span class="time">09:03</span></div>
    {body}
  </div>
</div>
</body></html>
"""
