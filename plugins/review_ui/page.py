# ruff: noqa: E501  (HTML templates read better unwrapped)
"""Server-rendered HTML of the review page (every dynamic value escaped)."""

from __future__ import annotations

from html import escape
from typing import Any

from infgate.review.queue import ClaimedItem, QueueStats
from infgate.review.render import png_data_uri, table_rows

__all__ = ["STYLE", "decision_keys", "login_page", "message_page", "review_page"]

STYLE = """
* { box-sizing: border-box; }
body { font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; }
header { display: flex; align-items: center; gap: 1.5rem; padding: .7rem 1.5rem;
         background: #1d2330; color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; font-weight: 600; }
header .who { margin-left: auto; }
header button { background: none; border: 1px solid #8890a0; color: #fff; border-radius: 4px;
                padding: .2rem .7rem; cursor: pointer; }
main { max-width: 1100px; margin: 1.2rem auto; padding: 0 1rem; }
.progress { display: flex; gap: .8rem; margin-bottom: 1rem; }
.stat { background: #fff; border-radius: 8px; padding: .6rem 1rem; flex: 1;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.stat b { display: block; font-size: 1.5rem; }
.stat span { color: #5b6472; font-size: .85rem; }
.card { background: #fff; border-radius: 10px; padding: 1.2rem 1.4rem;
        box-shadow: 0 1px 3px rgba(0,0,0,.1); }
.item { display: grid; grid-template-columns: minmax(200px, 340px) 1fr; gap: 1.6rem; }
.example img { width: 100%; image-rendering: pixelated; border: 1px solid #d5d9e0;
               border-radius: 6px; background: #fff; }
table.features { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
table.features td, table.features th { border-bottom: 1px solid #e6e8ec; padding: .25rem .5rem;
                                       text-align: left; }
table.features td { text-align: right; }
pre.tokens { white-space: pre-wrap; word-break: break-word; font-size: .95rem; margin: 0;
             background: #f4f5f7; border-radius: 6px; padding: .6rem .8rem; }
.muted { color: #5b6472; font-size: .85rem; margin: 0 0 .3rem; }
.labels { display: flex; gap: 1rem; margin-bottom: 1rem; }
.label { flex: 1; border-radius: 8px; padding: .6rem .9rem; background: #f4f5f7; }
.label small { color: #5b6472; display: block; }
.label strong { font-size: 2rem; }
.label.given strong { color: #b3261e; }
.label.suggested strong { color: #1b6e3a; }
.bar { height: 6px; background: #dfe3e8; border-radius: 3px; margin-top: .3rem; }
.bar i { display: block; height: 100%; background: #1b6e3a; border-radius: 3px; }
.why { color: #3a4250; font-size: .92rem; }
.refs { display: flex; gap: .5rem; flex-wrap: wrap; margin: .3rem 0 .6rem; }
.ref { text-align: center; font-size: .75rem; color: #5b6472; }
.ref img { width: 56px; height: 56px; image-rendering: pixelated; border: 1px solid #d5d9e0;
           border-radius: 4px; display: block; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; margin-top: 1rem; }
.actions button { font-size: 1rem; padding: .55rem .9rem; border-radius: 6px; cursor: pointer;
                  border: 1px solid #c3c8d0; background: #fff; }
.actions button.primary { background: #1b6e3a; color: #fff; border-color: #1b6e3a; }
.actions button.keep { background: #2b4c7e; color: #fff; border-color: #2b4c7e; }
kbd { font: .75rem ui-monospace, monospace; background: #eef0f3; color: #1d2330;
      border: 1px solid #c3c8d0; border-radius: 3px; padding: 0 .3rem; margin-left: .35rem; }
.classes { display: flex; flex-wrap: wrap; gap: .35rem; margin-top: .6rem; }
.classes button { min-width: 3.2rem; }
.flash { padding: .6rem 1rem; border-radius: 6px; margin-bottom: 1rem; background: #e7f3ea; }
.flash.error { background: #fbe9e7; color: #8c1d18; }
form.login { max-width: 380px; margin: 4rem auto; }
form.login label { display: block; margin: .6rem 0 .2rem; }
form.login input { width: 100%; padding: .5rem; font-size: 1rem; border: 1px solid #c3c8d0;
                   border-radius: 5px; }
form.login button { margin-top: 1rem; padding: .55rem 1.2rem; font-size: 1rem; }
"""


def _doc(title: str, body: str, nonce: str, script: str = "") -> str:
    js = f'<script nonce="{nonce}">{script}</script>' if script else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><style nonce="{nonce}">{STYLE}</style></head>'
        f"<body>{body}{js}</body></html>"
    )


def login_page(nonce: str, error: str | None = None) -> str:
    """The login form (token, or name + password)."""
    flash = f'<div class="flash error" role=alert>{escape(error)}</div>' if error else ""
    body = f"""<header><h1>infgate review</h1></header>
<form class="login card" method=post action="/login">
  <h2>Sign in</h2>{flash}
  <label for=token>Login token</label>
  <input id=token name=token type=password autocomplete=off placeholder="igt_...">
  <p style="color:#5b6472">or name and password</p>
  <label for=name>Name</label><input id=name name=name autocomplete=username>
  <label for=password>Password</label>
  <input id=password name=password type=password autocomplete=current-password>
  <button type=submit>Sign in</button>
</form>"""
    return _doc("infgate review: sign in", body, nonce)


def message_page(nonce: str, title: str, text: str) -> str:
    """A short error page with a way back."""
    body = (
        f'<header><h1>infgate review</h1></header><main><div class="flash error" role=alert>'
        f"<b>{escape(title)}</b>: {escape(text)}</div><a href='/'>Back to the queue</a></main>"
    )
    return _doc(f"infgate review: {title}", body, nonce)


def decision_keys(item: ClaimedItem) -> list[tuple[str, str, str]]:
    """``(key, decision value, button text)`` for every decision on ``item``."""
    keys = [("k", "keep", f"Keep {item.given_label}")]
    if item.suggested_label is not None and item.suggested_label != item.given_label:
        keys.append(("s", f"relabel:{item.suggested_label}", f"Relabel to {item.suggested_label}"))
    keys += [("n", "not_sure", "Not sure"), ("x", "invalid", "Not a valid example")]
    # class names, else the model's class indices (labels are checked against both)
    count = 2 if item.n_outputs == 1 else (item.n_outputs or 0)
    classes = item.classes or [str(i) for i in range(min(count, 1000))]
    for i, name in enumerate(classes):
        if name != item.given_label:
            key = str(i) if len(classes) <= 10 else ""
            keys.append((key, f"relabel:{name}", name))
    return keys


def _example(item: ClaimedItem) -> str:
    if item.features is None:
        return "<p>(the scan stored no features for this example)</p>"
    if item.image_shape is not None:
        uri = png_data_uri(item.features, item.image_shape, scale=24)
        return f'<img id=example alt="example {escape(item.example_id)}" src="{uri}">'
    if item.tokens:  # a token-id sequence: the ids in order, padding left out
        shown = item.token_ids()
        note = (
            f"{len(shown)} token ids (padding id {item.pad_token_id} not shown)"
            if item.pad_token_id is not None
            else f"{len(shown)} token ids"
        )
        return (
            f"<p class=muted>{escape(note)}</p>"
            f"<pre id=example class=tokens>{escape(' '.join(map(str, shown)))}</pre>"
        )
    rows = "".join(
        f"<tr><th>{escape(n)}</th><td>{v:.6g}</td></tr>"
        for n, v in table_rows(item.features, item.feature_names)
    )
    return f"<table id=example class=features><tbody>{rows}</tbody></table>"


def _refs(
    refs: list[dict[str, Any]], thumbs: dict[str, tuple[list[float], str | None]], item: ClaimedItem
) -> str:
    out = []
    for ref in refs[:5]:
        ex = str(ref.get("train_example_id"))
        infl = ref.get("influence")
        feats, label = thumbs.get(ex, (None, None))
        img = ""
        if feats is not None and item.image_shape is not None:
            img = f'<img alt="training example {escape(ex)}" src="{png_data_uri(feats, item.image_shape, scale=4)}">'
        text = f"{escape(ex)}" + (f" · label {escape(str(label))}" if label is not None else "")
        if isinstance(infl, int | float):
            text += f"<br>{infl:+.3g}"
        out.append(f"<div class=ref>{img}{text}</div>")
    return "".join(out)


def review_page(
    nonce: str,
    annotator: str,
    item: ClaimedItem | None,
    stats: QueueStats,
    mine_today: int,
    thumbs: dict[str, tuple[list[float], str | None]],
    flash: str | None = None,
    *,
    csrf: str = "",
) -> str:
    """The review page: progress, the example, its labels, why it was flagged, decisions.

    ``csrf`` is the session's CSRF token, posted back by every form on the page.
    """
    csrf_field = f'<input type=hidden name=csrf_token value="{escape(csrf)}">'
    agreement = "–" if stats.agreement is None else f"{stats.agreement:.0%}"
    progress = f"""<section class=progress aria-label=progress>
  <div class=stat><b id=left>{stats.left}</b><span>items left</span></div>
  <div class=stat><b id=mine-today>{mine_today}</b><span>decided today by you</span></div>
  <div class=stat><b id=decided-today>{stats.decided_today}</b><span>decided today, everyone</span></div>
  <div class=stat><b id=agreement>{agreement}</b><span>agreement ({stats.agreement_items} double-checked)</span></div>
</section>"""
    note = f"<div class=flash role=status>{escape(flash)}</div>" if flash else ""
    if item is None:
        main = f"{note}<div class=card id=empty><h2>Nothing left to review</h2><p>The queue is empty for you. Thank you!</p></div>"
        script = ""
    else:
        conf = item.suggestion_confidence
        conf_txt = "" if conf is None else f"{conf:.0%} confident"
        bar = (
            "" if conf is None else f'<div class=bar><i style="width:{100 * conf:.0f}%"></i></div>'
        )
        expl = item.explanation or {}
        why = (
            f"<p>Ranking score <b id=score>{item.score:.4g}</b> (rank {item.rank} in its scan; "
            f"higher = more likely mislabeled)."
        )
        if item.self_influence is not None:
            why += f" Self-influence <b id=self-influence>{item.self_influence:.4g}</b>."
        if item.error_probability is not None:
            why += f" Estimated chance the label is wrong: {item.error_probability:.0%}."
        why += "</p>"
        if expl.get("supporting") or expl.get("opposing"):
            why += (
                "<p class=sign>Influence of a training example on this one's loss under its "
                "given label: negative = it supports the given label (evidence against the "
                "flag), positive = it opposes it (evidence for the flag).</p>"
            )
        if expl.get("supporting"):
            why += "<p>Training examples that support the given label:</p><div class=refs>"
            why += _refs(expl["supporting"], thumbs, item) + "</div>"
        if expl.get("opposing"):
            why += "<p>Training examples that oppose the given label:</p><div class=refs>"
            why += _refs(expl["opposing"], thumbs, item) + "</div>"
        buttons: list[str] = []
        classes: list[str] = []
        for key, value, text in decision_keys(item):
            kbd = f"<kbd>{escape(key.upper())}</kbd>" if key else ""
            css = "primary" if key == "s" else "keep" if key == "k" else ""
            btn = (
                f'<button type=submit name=decision value="{escape(value)}" data-key="{escape(key)}" '
                f'class="{css}">{escape(text)}{kbd}</button>'
            )
            (buttons if key in ("k", "s", "n", "x") else classes).append(btn)
        main = f"""{note}<article class="card item" data-item="{item.item_id}">
  <div class=example>{_example(item)}<p class=why>example <b>{escape(item.example_id)}</b> · item {item.item_id}</p></div>
  <div>
    <div class=labels>
      <div class="label given"><small>given label</small><strong id=given>{escape(str(item.given_label))}</strong></div>
      <div class="label suggested"><small>suggested label · {conf_txt}</small>
        <strong id=suggested>{escape(str(item.suggested_label))}</strong>{bar}</div>
    </div>
    <div class=why><h3>Why it was flagged</h3>{why}</div>
    <form method=post action="/decide" id=decide>
      <input type=hidden name=item_id value="{item.item_id}">
      <input type=hidden name=lease_token value="{escape(str(item.lease_token))}">{csrf_field}
      <div class=actions>{"".join(buttons)}</div>
      <p class=why>or relabel to another class:</p><div class="actions classes">{"".join(classes)}</div>
    </form>
  </div>
</article>"""
        script = """
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === 'INPUT') return;
  const key = e.key.toLowerCase();
  const btn = document.querySelector(`#decide button[data-key="${CSS.escape(key)}"]`);
  if (btn) { e.preventDefault(); btn.click(); }
});"""
    body = f"""<header><h1>infgate review</h1><span class=who>signed in as <b id=who>{escape(annotator)}</b></span>
<form method=post action="/logout">{csrf_field}<button type=submit>Sign out</button></form></header>
<main>{progress}{main}</main>"""
    return _doc("infgate review", body, nonce, script)
