"""Canonical records, file readers, and the converters between them.

Every stage consumes one canonical kind of record (plain dicts):

    text        {"text": str}                                              pretraining
    messages    {"messages": [{"role", "content"}, ...]}                   SFT
    preference  {"prompt": [messages ending with user], "chosen": str, "rejected": str}   RM, DPO
    prompt      {"prompt": [messages ending with user]}                    PPO

Roles are system (optional, first), then user/assistant alternating; an assistant message may carry its
`reasoning_content`. A chat cut from a longer one (opening with an assistant turn, or ending with a user
turn) loses those end turns, counted in the load stats. Source formats (Alpaca, ShareGPT,
OpenAI messages, LLaMA-Factory `dataset_info.json` folders; jsonl/json/csv/parquet/txt files) convert at
the edge by small pure functions. A bad record raises `DataError` naming file, line, field and reason;
`load_source(..., on_error="skip")` skips and counts instead -- never silently.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from camelid import hub
from camelid.data.readers import SUPPORTED, DataError, raw_records, read_records, type_name  # noqa: F401 (DataError, read_records re-exported)
from camelid.utils import CamelidError, log, sha256_file

FORMATS = ("auto", "text", "openai", "sharegpt", "alpaca", "preference", "prompt")

OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TOOL_ROLES = {"tool", "function", "function_call", "observation", "ipython"}
# Fields whose non-empty presence changes what the model sees; dropping them silently would train on
# conversations that no longer make sense, so they fail until camelid supports them.
UNSUPPORTED_FIELDS = {"tools": "tool definitions", "images": "images", "videos": "videos", "audios": "audio"}


# ------------------------------------------------------------------------------ detection, fields


def detect_format(record: dict, path: Any = None, line: int | None = None) -> str:
    """One of text, openai, sharegpt, alpaca, preference, prompt -- from the record's keys."""
    if not isinstance(record, dict):
        raise DataError(path, line, None, f"expected a record object, got {type_name(record)}")
    if "chosen" in record and "rejected" in record:
        return "preference"
    for key, fmt in (
        ("messages", "openai"),
        ("conversations", "sharegpt"),
        ("instruction", "alpaca"),
        ("text", "text"),
        ("prompt", "prompt"),
    ):
        if key in record:
            return fmt
    raise DataError(
        path,
        line,
        None,
        f"unknown record format, keys {sorted(record)}; expected one of "
        "text, messages, conversations, instruction, prompt (+ chosen/rejected)",
    )


def _style(record: Any, fmt: str, path: Any, line: int | None) -> str:
    """The shape of the conversation part: openai, sharegpt, alpaca, prompt or text."""
    if fmt not in FORMATS:
        raise CamelidError(f"unknown data format '{fmt}'; choose one of {', '.join(FORMATS)}")
    style = detect_format(record, path, line) if fmt == "auto" else fmt
    if style == "preference":  # a pair's prompt side is written in one of the other shapes
        style = detect_format({k: v for k, v in record.items() if k not in ("chosen", "rejected")}, path, line)
    return style


def _str(rec: dict, key: Any, path: Any, line: int | None, field: str | None = None, optional: bool = False) -> str:
    v, field = rec[key] if isinstance(rec, (list, tuple)) else rec.get(key), field or str(key)
    if v is None:
        if optional:
            return ""
        raise DataError(path, line, field, "missing")
    if not isinstance(v, str):
        raise DataError(path, line, field, f"expected a string, got {type_name(v)}")
    return v


def _role(name: Any, table: dict[str, str], path: Any, line: int | None, field: str) -> str:
    if name in TOOL_ROLES:
        raise DataError(path, line, field, f"tool turns ('{name}') are unsupported for now")
    if name is None:
        raise DataError(path, line, field, "missing")
    if name not in table:
        raise DataError(path, line, field, f"unknown role {name!r}; expected one of {', '.join(table)}")
    return table[name]


def _nonempty(v: Any) -> bool:
    return v not in (None, "", "[]", "{}", [], {})


# ------------------------------------------------------------------------------ conversation shapes
# Each returns (message, source field) pairs; the field names the record's own key in error messages.

Pairs = list[tuple[dict, str]]


def _message_list(msgs: Any, name: str, table: dict, path: Any, line: int | None) -> Pairs:
    if not isinstance(msgs, list):
        raise DataError(path, line, name, f"expected a list of messages, got {type_name(msgs)}")
    pairs = []
    for i, m in enumerate(msgs):
        field = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(path, line, field, f"expected a message object, got {type_name(m)}")
        if m.get("tool_calls"):
            raise DataError(path, line, field + ".tool_calls", "tool turns are unsupported for now")
        # ShareGPT writes {from, value}; OpenAI writes {role, content}. Accept either in both.
        rk, ck = ("from", "value") if "from" in m else ("role", "content")
        role = _role(m.get(rk), table, path, line, f"{field}.{rk}")
        msg = {"role": role, "content": _str(m, ck, path, line, f"{field}.{ck}")}
        # The reasoning an assistant wrote before its answer stays with that turn: the model's own template
        # decides where it is shown (Qwen3 keeps it only after the last user query).
        reasoning = _str(m, "reasoning_content", path, line, f"{field}.reasoning_content", optional=True)
        if reasoning:
            if role != "assistant":
                raise DataError(path, line, f"{field}.reasoning_content", "only assistant messages carry reasoning")
            msg["reasoning_content"] = reasoning
        pairs.append((msg, field))
    return pairs


def _with_system(pairs: Pairs, rec: dict, path: Any, line: int | None) -> Pairs:
    # A system turn inside the conversation wins over a top-level `system` (LLaMA-Factory's rule).
    system = _str(rec, "system", path, line, optional=True)
    if system and not (pairs and pairs[0][0]["role"] == "system"):
        return [({"role": "system", "content": system}, "system")] + pairs
    return pairs


def _alpaca_pairs(rec: dict, path: Any, line: int | None, answer: bool | None) -> Pairs:
    pairs: Pairs = []
    history = rec.get("history")
    if _nonempty(history):
        if not isinstance(history, list):
            raise DataError(
                path, line, "history", f"expected a list of [user, assistant] pairs, got {type_name(history)}"
            )
        for i, turn in enumerate(history):
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
                raise DataError(path, line, f"history[{i}]", "expected a [user, assistant] pair")
            for j, role in enumerate(("user", "assistant")):
                field = f"history[{i}][{j}]"
                pairs.append(({"role": role, "content": _str(turn, j, path, line, field)}, field))
    query = _str(rec, "input", path, line, optional=True)
    instruction = _str(rec, "instruction", path, line)
    # Alpaca's convention: the input is extra context after the instruction, separated by a blank line.
    pairs.append(({"role": "user", "content": f"{instruction}\n\n{query}" if query else instruction}, "instruction"))
    if answer or (answer is None and rec.get("output") is not None):
        pairs.append(({"role": "assistant", "content": _str(rec, "output", path, line)}, "output"))
    return _with_system(pairs, rec, path, line)


def _pairs(rec: dict, style: str, path: Any, line: int | None, answer: bool | None) -> Pairs:
    """The conversation part of a record (not chosen/rejected). `answer`: alpaca's output required/dropped/if present."""
    for key, what in UNSUPPORTED_FIELDS.items():
        if _nonempty(rec.get(key)):
            raise DataError(path, line, key, f"{what} are unsupported for now")
    if style == "openai":
        return _with_system(_message_list(rec.get("messages"), "messages", OPENAI_ROLES, path, line), rec, path, line)
    if style == "sharegpt":
        return _with_system(
            _message_list(rec.get("conversations"), "conversations", SHAREGPT_ROLES, path, line), rec, path, line
        )
    if style == "alpaca":
        return _alpaca_pairs(rec, path, line, answer)
    if style == "prompt":
        p = rec.get("prompt")
        pairs = (
            [({"role": "user", "content": p}, "prompt")]
            if isinstance(p, str)
            else _message_list(p, "prompt", OPENAI_ROLES, path, line)
        )
        return _with_system(pairs, rec, path, line)
    raise DataError(path, line, None, f"a '{style}' record holds no conversation")


def _drop_opening_assistant(pairs: Pairs, notes: Counter | None) -> Pairs:
    """A chat cut out of a longer one can open with the assistant's reply to a question it no longer holds: that
    turn is dropped (one turn: two assistant turns in a row are a broken record and fail in _check_order)."""
    head = 1 if pairs and pairs[0][0]["role"] == "system" else 0
    if len(pairs) > head and pairs[head][0]["role"] == "assistant":
        pairs = pairs[:head] + pairs[head + 1 :]
        if notes is not None:
            notes["leading_assistant_turns"] += 1
    return pairs


def _check_order(pairs: Pairs, path: Any, line: int | None) -> list[dict]:
    expect = "user"
    for i, (m, field) in enumerate(pairs):
        if m["role"] == "system":
            if i == 0:
                continue
            raise DataError(path, line, field, "a system message is allowed only first")
        if m["role"] != expect:
            want = "a user" if expect == "user" else "an assistant"
            raise DataError(
                path, line, field, f"expected {want} turn, got {m['role']} (turns alternate user/assistant)"
            )
        if expect == "assistant" and not m["content"].strip():
            raise DataError(path, line, field, "empty assistant answer")
        expect = "assistant" if expect == "user" else "user"
    if all(m["role"] == "system" for m, _ in pairs):
        raise DataError(path, line, None, "no user turn")
    return [m for m, _ in pairs]


def _answer(rec: dict, key: str, path: Any, line: int | None) -> str:
    v, field = rec.get(key), key
    if isinstance(v, list) and len(v) == 1:  # TRL's conversational form: [{"role": "assistant", ...}]
        v, field = v[0], f"{key}[0]"
    if isinstance(v, dict):
        rk, ck = ("from", "value") if "from" in v else ("role", "content")
        if _role(v.get(rk), SHAREGPT_ROLES, path, line, f"{field}.{rk}") != "assistant":
            raise DataError(path, line, f"{field}.{rk}", "expected an assistant message")
        v, field = v.get(ck), f"{field}.{ck}"
    if v is None:
        raise DataError(path, line, field, "missing")
    if not isinstance(v, str):
        raise DataError(path, line, field, f"expected a string or an assistant message, got {type_name(v)}")
    if not v.strip():
        raise DataError(path, line, field, "empty answer")
    return v


# ------------------------------------------------------------------------------------ converters


def to_text(
    record: dict, fmt: str = "auto", *, path: Any = None, line: int | None = None, notes: Counter | None = None
) -> dict:
    """Pretraining text. A chat record becomes its turns' contents joined by "\\n" -- without the system
    prompt, which instructs the model rather than being text to learn -- so any SFT set can feed `pt`.
    `notes` is unused (text keeps every turn); it is there so every converter takes the same arguments."""
    style = _style(record, fmt, path, line)
    if style == "text":
        text = _str(record, "text", path, line)
    else:
        if "chosen" in record and "rejected" in record:
            raise DataError(path, line, None, "a preference pair is not pretraining text")
        text = "\n".join(
            m["content"] for m, _ in _pairs(record, style, path, line, None) if m["role"] != "system" and m["content"]
        )
    if not text.strip():
        raise DataError(path, line, "text", "empty text")
    return {"text": text}


def to_messages(
    record: dict, fmt: str = "auto", *, path: Any = None, line: int | None = None, notes: Counter | None = None
) -> dict:
    """An SFT conversation: optional system, then user/assistant alternating, ending with assistant.

    A chat cut from a longer one loses an opening assistant turn and a closing user turn (counted in `notes`)."""
    style = _style(record, fmt, path, line)
    if "chosen" in record and "rejected" in record:
        raise DataError(
            path, line, None, "a preference pair (chosen/rejected) is not an SFT example: use it with kind 'preference'"
        )
    # LLaMA-Factory's KTO sets mark undesirable answers with label false; those must not be imitated.
    if record.get("kto_label") is False:
        raise DataError(path, line, "kto_tag", "an answer labelled undesirable (KTO false) is not an SFT example")
    pairs = _drop_opening_assistant(_pairs(record, style, path, line, True), notes)
    messages = _check_order(pairs, path, line)
    if messages[-1]["role"] == "user" and any(m["role"] == "assistant" for m in messages):
        # A closing question whose answer was cut off teaches nothing; the turns before it still do.
        messages = messages[:-1]
        if notes is not None:
            notes["trailing_user_turns"] += 1
    if messages[-1]["role"] != "assistant":
        raise DataError(path, line, pairs[-1][1], "the conversation must end with an assistant answer")
    return {"messages": messages}


def to_prompt(
    record: dict, fmt: str = "auto", *, path: Any = None, line: int | None = None, notes: Counter | None = None
) -> dict:
    """A PPO prompt. A final assistant turn (a reference answer) is dropped: the policy writes its own;
    so is an opening assistant turn (counted in `notes`)."""
    pairs = _pairs(record, _style(record, fmt, path, line), path, line, False)
    if pairs and pairs[-1][0]["role"] == "assistant":
        pairs = pairs[:-1]
    pairs = _drop_opening_assistant(pairs, notes)
    prompt = _check_order(pairs, path, line)
    if prompt[-1]["role"] != "user":
        raise DataError(path, line, None, "the prompt must end with a user turn")
    return {"prompt": prompt}


def to_preference(
    record: dict, fmt: str = "auto", *, path: Any = None, line: int | None = None, notes: Counter | None = None
) -> dict:
    """A preference pair: prompt messages ending with user, and the chosen and rejected answers.
    An opening assistant turn of the prompt is dropped (counted in `notes`)."""
    pairs = _drop_opening_assistant(_pairs(record, _style(record, fmt, path, line), path, line, False), notes)
    prompt = _check_order(pairs, path, line)
    if prompt[-1]["role"] != "user":
        raise DataError(path, line, pairs[-1][1], "the prompt of a preference pair must end with a user turn")
    chosen, rejected = _answer(record, "chosen", path, line), _answer(record, "rejected", path, line)
    if chosen == rejected:  # a pair that teaches nothing is almost always a data bug
        raise DataError(path, line, "rejected", "identical to chosen")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# What load_source counts in its stats' "trimmed" (saved in a run's data.json): end turns of cut chats.
TRIMMED = ("leading_assistant_turns", "trailing_user_turns")

KINDS: dict[str, Callable[..., dict]] = {
    "text": to_text,
    "messages": to_messages,
    "preference": to_preference,
    "prompt": to_prompt,
}


# ---------------------------------------------------------------------- LLaMA-Factory data folders
# dataset_info.json names each source column; we rename them to the standard alpaca/sharegpt keys
# (standard key -> (LLaMA-Factory column key, its default column)) and then convert as usual.
_LF_COMMON = {
    "system": ("system", None),
    "chosen": ("chosen", None),
    "rejected": ("rejected", None),
    "kto_label": ("kto_tag", None),
    "tools": ("tools", None),
    "images": ("images", None),
    "videos": ("videos", None),
    "audios": ("audios", None),
}
_LF_COLUMNS = {
    "alpaca": {
        "instruction": ("prompt", "instruction"),
        "input": ("query", "input"),
        "output": ("response", "output"),
        "history": ("history", None),
        **_LF_COMMON,
    },
    "sharegpt": {"conversations": ("messages", "conversations"), **_LF_COMMON},
}
_LF_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
_LF_REMOTE = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

Mapper = Callable[[dict, Path, int], dict]


def _lf_plan(folder: str | Path, name: str) -> tuple[list[Path], Mapper, str]:
    """Files, a record mapper and the format for one dataset_info.json entry."""
    folder = Path(folder).expanduser()
    info_path = folder / "dataset_info.json"
    if not info_path.is_file():
        raise CamelidError(f"{folder} has no dataset_info.json (expected a LLaMA-Factory data folder)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CamelidError(f"{info_path}:{e.lineno}: bad JSON: {e.msg}") from None
    if name not in info:
        close = difflib.get_close_matches(name, list(info), n=5, cutoff=0.5)
        raise CamelidError(
            f"no dataset '{name}' in {info_path}; "
            + (f"did you mean {', '.join(close)}?" if close else f"it has {', '.join(sorted(info))}")
        )
    entry = info[name]
    if "file_name" not in entry:
        remote = ", ".join(f"{k}={entry[k]}" for k in _LF_REMOTE if k in entry) or "no file_name"
        raise CamelidError(
            f"dataset '{name}' in {info_path} needs a download ({remote}); camelid reads local "
            f"files only: fetch it yourself and give the local file (or add a 'file_name' to the entry)"
        )
    formatting = entry.get("formatting", "alpaca")
    if formatting not in _LF_COLUMNS:
        raise CamelidError(
            f"{info_path}: dataset '{name}': formatting '{formatting}' is unsupported; use alpaca or sharegpt"
        )
    table, columns = _LF_COLUMNS[formatting], entry.get("columns") or {}
    known = {lf for lf, _ in table.values()}
    for key in columns:
        if key not in known:
            raise CamelidError(f"{info_path}: dataset '{name}': unknown column key '{key}' for {formatting}")
    plan = {std: columns.get(lf, default) for std, (lf, default) in table.items()}
    plan = {std: col for std, col in plan.items() if col}
    target = folder / entry["file_name"]
    if not target.exists():
        raise CamelidError(f"{info_path}: dataset '{name}': file {target} does not exist")
    files = sorted(p for p in target.iterdir() if p.suffix.lower() in SUPPORTED) if target.is_dir() else [target]
    tags = {**_LF_TAGS, **(entry.get("tags") or {})}
    return files, lambda rec, path, line: _lf_map(rec, plan, tags, formatting, path, line), formatting


def _lf_map(rec: dict, plan: dict[str, str], tags: dict[str, str], formatting: str, path: Path, line: int) -> dict:
    out = {std: rec[col] for std, col in plan.items() if col in rec}
    main = "instruction" if formatting == "alpaca" else "conversations"
    if main not in out:
        raise DataError(path, line, plan[main], "missing")
    if formatting == "sharegpt":
        roles = {
            tags["user_tag"]: "human",
            tags["assistant_tag"]: "gpt",
            tags["system_tag"]: "system",
            tags["observation_tag"]: "observation",
            tags["function_tag"]: "function_call",
        }

        def turn(t: Any) -> Any:  # non-dicts pass through so the converter reports them with their index
            if not isinstance(t, dict):
                return t
            role = t.get(tags["role_tag"])
            return {"from": roles.get(role, role), "value": t.get(tags["content_tag"])}

        conv = out["conversations"]
        out["conversations"] = [turn(t) for t in conv] if isinstance(conv, list) else conv
        for key in ("chosen", "rejected"):
            if isinstance(out.get(key), dict):
                out[key] = turn(out[key])
    return out


# ------------------------------------------------------------------------------------ load_source


def _mapped(files: list[Path], mapper: Mapper | None) -> Iterator[tuple[Path, int, dict | DataError]]:
    for p in files:
        for line, rec in raw_records(p):
            if mapper is not None and not isinstance(rec, DataError):
                try:
                    rec = mapper(rec, p, line)
                except DataError as e:
                    rec = e
            yield p, line, rec


def _open_source(spec: str, fmt: str) -> tuple[list[Path], Iterator, str]:
    p = Path(spec).expanduser()
    if p.is_file():
        return [p], _mapped([p], None), fmt
    if p.is_dir():
        raise CamelidError(
            f"'{spec}' is a folder: give a data file, or name an entry of a LLaMA-Factory "
            f"dataset_info.json folder as '{spec}@NAME'"
        )
    if p.suffix.lower() in SUPPORTED:
        raise CamelidError(f"data file '{spec}' does not exist")
    if "@" in spec:
        folder, name = spec.rsplit("@", 1)
    elif (hit := hub.resolve_dataset(spec)) is not None:
        folder, name = hit
    else:
        close = difflib.get_close_matches(spec, hub.dataset_names(), n=3, cutoff=0.6)
        raise CamelidError(
            f"data source '{spec}' is not a file ({'/'.join(SUPPORTED)}), not FOLDER@ENTRY of a LLaMA-Factory "
            f"dataset_info.json folder, and not a catalog dataset ({', '.join(hub.dataset_names())})"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    files, mapper, lf_fmt = _lf_plan(folder, name)
    return files, _mapped(files, mapper), lf_fmt if fmt == "auto" else fmt


def load_source(
    spec: str, kind: str, on_error: str = "fail", max_samples: int | None = None, fmt: str = "auto"
) -> tuple[list[dict], dict]:
    """Canonical records of `kind` from a file, FOLDER@ENTRY or catalog dataset name, and stats.

    on_error="fail" raises the first DataError; "skip" skips bad records and counts them by reason.
    stats["trimmed"] counts the turns dropped from the ends of chats cut from longer ones.
    max_samples caps the records kept (reading stops there).
    """
    records, stats = stream_source(spec, kind, on_error, max_samples, fmt)
    return list(records), stats


def stream_source(
    spec: str, kind: str, on_error: str = "fail", max_samples: int | None = None, fmt: str = "auto"
) -> tuple[Iterator[dict], dict]:
    """`load_source` one record at a time, for corpora larger than memory: (the records as they are read, stats).
    The stats name the files and their hashes at once; the counts are filled in when the records run out."""
    convert = KINDS.get(kind)
    if convert is None:
        raise CamelidError(f"unknown data kind '{kind}'; choose one of {', '.join(KINDS)}")
    if on_error not in ("fail", "skip"):
        raise CamelidError(f"on_error must be 'fail' or 'skip', got '{on_error}'")
    if fmt not in FORMATS:
        raise CamelidError(f"unknown data format '{fmt}'; choose one of {', '.join(FORMATS)}")
    files, records, fmt = _open_source(spec, fmt)
    stats: dict[str, Any] = {
        "source": spec,
        "files": [{"path": str(f.resolve()), "sha256": sha256_file(f)} for f in files],
        "read": 0,
        "kept": 0,
        "skipped": 0,
        "reasons": {},
    }

    def convert_all() -> Iterator[dict]:
        kept, reasons, trimmed = 0, Counter(), Counter({k: 0 for k in TRIMMED})
        for path, line, rec in records:
            if max_samples is not None and kept >= max_samples:
                break
            stats["read"] += 1
            notes = Counter()
            try:
                if isinstance(rec, DataError):
                    raise rec
                out = convert(rec, fmt, path=path, line=line, notes=notes)
            except DataError as e:
                if on_error == "fail":
                    raise
                reasons[f"field '{e.field}': {e.reason}" if e.field else e.reason] += 1
                continue
            trimmed.update(notes)  # kept records only: a skipped record is counted once, by its reason
            kept += 1
            yield out
        stats.update(
            kept=kept, skipped=sum(reasons.values()), reasons=dict(reasons.most_common()), trimmed=dict(trimmed)
        )
        if any(trimmed.values()):
            log.info(
                f"{spec}: dropped {trimmed['leading_assistant_turns']} opening assistant turns and "
                f"{trimmed['trailing_user_turns']} closing user turns of chats cut from longer ones"
            )
        if reasons:
            top = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
            log.warning(f"{spec}: skipped {stats['skipped']} of {stats['read']} records as {kind}: {top}")

    return convert_all(), stats
