"""``pitstop chat``: an interactive REPL that streams the model's answer to the terminal."""

from __future__ import annotations

import argparse
import sys

from pitstop.cli.log import show_engine_log


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("chat", help="interactive chat (streams tokens)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--system", default=None, help="system prompt")
    return p


def stream_reply(llm, messages: list[dict], params, out=sys.stdout) -> str:
    """Generate the assistant's reply to ``messages``, writing text to ``out`` as tokens arrive."""
    engine = llm.llm_engine
    tok = llm.get_tokenizer()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rid = engine.add_request(None, None, params, prompt_token_ids=list(tok(text, add_special_tokens=False).input_ids))
    detok = engine.detokenizer(rid)
    reply = ""
    try:
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.request_id != rid:
                    continue
                delta = detok.get_delta()
                out.write(delta)
                out.flush()
                reply = o.outputs[0].text
    except KeyboardInterrupt:
        engine.abort_request(rid)
        while engine.has_unfinished_requests():
            engine.step()
    out.write("\n")
    return reply


def run(args: argparse.Namespace) -> int:
    show_engine_log()
    from pitstop import LLM, SamplingParams
    from pitstop.cli.engine_args import engine_kwargs

    llm = LLM(**engine_kwargs(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print("pitstop chat: type a message, /reset to start over, /exit or Ctrl-D to quit.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        sys.stdout.write("assistant> ")
        messages.append({"role": "assistant", "content": stream_reply(llm, messages, params)})
