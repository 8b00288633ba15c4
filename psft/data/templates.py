"""Chat templates for assistant-only loss: the one a run trains with, checked before any model loads.

TRL's `assistant_only_loss` needs `{% generation %}` markers around the assistant turn (its end-of-turn
token included, or the model never learns to stop). Many instruct models ship without them. In order:

1. `chat_template_path` (TRL's field): a .jinja file, or `psft/chatml` for the ChatML template shipped with
   psft (`psft/assets/chat_templates/chatml.jinja`), replaces the model's template, as in TRL;
2. a template with markers, or one TRL patches (`trl.chat_template_utils.get_training_chat_template`);
3. the one-line ChatML loop many models use (SmolLM/SmolLM2 among them) is patched here: the assistant turn is
   wrapped in markers, and the patch is kept only if it renders every probe conversation exactly as the
   original does and masks exactly the assistant's content and its `<|im_end|>`;
4. otherwise a one-line error naming the model and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from psft.errors import UserError

TEMPLATES_DIR = Path(__file__).parents[1] / "assets" / "chat_templates"
BUILTIN_TEMPLATE_PREFIX = "psft/"  # `psft/chatml` -> TEMPLATES_DIR / "chatml.jinja"

# `{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}`, the newline
# written either as a real newline or as `\n` inside the Jinja string, any quotes and spacing
_NL = r"(?:\n|\\n)"
_CHATML_TURN = re.compile(
    r"\{\{-?\s*(['\"])<\|im_start\|>\1\s*\+\s*message\[(['\"])role\2\]\s*\+\s*(['\"])" + _NL + r"\3\s*\+\s*"
    r"message\[(['\"])content\4\]\s*\+\s*(['\"])<\|im_end\|>(?P<nl_in>" + _NL + r")?\5"
    r"(?P<nl_after>\s*\+\s*(['\"])" + _NL + r"\8)?\s*-?\}\}"
)
_PROBES = [
    [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "It is 6."},
    ],
]


def resolve_template_path(path: str | None) -> str | None:
    """`psft/<name>` -> the shipped `<name>.jinja`; anything else unchanged (a file, or a hub tokenizer)."""
    if path is None or not path.startswith(BUILTIN_TEMPLATE_PREFIX) or Path(path).exists():
        return path
    name = path[len(BUILTIN_TEMPLATE_PREFIX) :]
    file = TEMPLATES_DIR / f"{name}.jinja"
    if not file.is_file():
        known = ", ".join(f"psft/{p.stem}" for p in sorted(TEMPLATES_DIR.glob("*.jinja")))
        raise UserError(f"chat_template_path: no built-in template {path!r}; built-in: {known}")
    return str(file)


def patch_chatml(template: str) -> str | None:
    """The one-line ChatML loop with the assistant turn inside `{% generation %}`, or None if not that loop."""
    match = _CHATML_TURN.search(template)
    if match is None:
        return None
    newline = "\\n"
    after = newline if (match.group("nl_in") or match.group("nl_after")) else ""
    assistant = (
        f"{{{{ '<|im_start|>' + message['role'] + '{newline}' }}}}{{% generation %}}"
        f"{{{{ message['content'] + '<|im_end|>' }}}}{{% endgeneration %}}"
        + (f"{{{{ '{after}' }}}}" if after else "")
    )
    branch = f"{{% if message['role'] == 'assistant' %}}{assistant}{{% else %}}{match.group(0)}{{% endif %}}"
    return template[: match.start()] + branch + template[match.end() :]


def _patch_is_exact(tokenizer: Any, original: str, patched: str) -> bool:
    """Same text as the original on every probe, and the mask is exactly each assistant content + <|im_end|>."""
    for messages in _PROBES:
        try:
            before = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=original)
            after = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=patched)
            out = tokenizer.apply_chat_template(
                messages,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                chat_template=patched,
            )
        except Exception:  # a template error of any kind: the patch does not apply
            return False
        if before != after:
            return False
        masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
        expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        if tokenizer.decode(masked) != expected:
            return False
    return True


def prepare_training_template(tokenizer: Any, chat_template_path: str | None, model_name: str) -> str | None:
    """Check (and where needed, patch) the chat template `assistant_only_loss` will train with.

    Returns a template to set on the tokenizer (a user's file or psft's checked ChatML patch), or None when
    the tokenizer's own template works (it has markers, or TRL patches it). UserError otherwise."""
    from trl.chat_template_utils import get_training_chat_template

    template = None
    path = resolve_template_path(chat_template_path)
    if path is not None and Path(path).is_file():
        template = Path(path).read_text(encoding="utf-8")
        source = path
    elif path is not None:
        return None  # a hub tokenizer TRL clones the template from: checked by TRL once it has it
    else:
        template, source = getattr(tokenizer, "chat_template", None), model_name
    if not template:
        raise UserError(
            f"{model_name}: the tokenizer has no chat template; set chat_template_path: psft/chatml "
            "(ChatML with generation markers) or assistant_only_loss: false"
        )
    if isinstance(template, dict):
        template = template.get("default")
    saved = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        get_training_chat_template(tokenizer)
        return template if path is not None else None
    except ValueError:
        pass
    finally:
        tokenizer.chat_template = saved
    patched = patch_chatml(template)
    if patched is not None and _patch_is_exact(tokenizer, template, patched):
        return patched
    raise UserError(
        f"{source}: the chat template has no {{% generation %}} markers and neither TRL nor psft can add them: "
        "set chat_template_path: psft/chatml (ChatML with markers) or a .jinja file with the assistant turn and "
        "its end token inside {% generation %}...{% endgeneration %}, or assistant_only_loss: false"
    )
