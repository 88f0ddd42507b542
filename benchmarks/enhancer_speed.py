"""Tokens per second of the prompt enhancer's generation, with and without the KV cache.

    python -m benchmarks.enhancer_speed --config small --new-tokens 64 --threads 2 [--json out.json]

Random weights of a Qwen3-VL-shaped decoder (36 layers, the real 151936-token vocabulary) in float32 on the CPU;
the prompt is the enhancer's real request (system prompt + user turn) tokenised with the Qwen tokenizer. Reported:
the time to the first token (the prompt pass), and decode tokens/s after it for greedy unconstrained generation
with the cache, without it (every step re-runs the whole sequence), and constrained to the caption schema with the
cache (the masks' cost included; text the schema forces is written without a model step, so constrained output
can outpace the model; budget = ``--new-tokens``). Median of ``--repeats`` runs. Random weights: the tokens are
noise, the speed is what matters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ideogram4.constrained_decoding import CaptionTokenGrammar, ConstrainedCaptionChoice, TokenVocabulary
from ideogram4.prompt_enhancer import enhancer_request
from ideogram4.text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder
from ideogram4.text_generation import Qwen3VLLanguageModelHead, SampledTokens, generate
from ideogram4.tokens import load_tokenizer

CONFIGS = {
    "tiny": Qwen3VLTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=8),
    "small": Qwen3VLTextConfig(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4,
                               head_dim=64),
}


def random_model(config: Qwen3VLTextConfig, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    encoder = Qwen3VLTextEncoder(config, dtype=torch.float32).eval()
    head = Qwen3VLLanguageModelHead(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, parameter in list(encoder.named_parameters()) + list(head.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1.0 + 0.1 * noise if "norm" in name else noise / max(parameter.shape[-1], 1) ** 0.5)
    return encoder, head


def _timed_run(run) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens per second after it, tokens) of one generation; ``run(on_tokens)``
    generates and calls ``on_tokens(count)`` after every step."""
    stamps = []
    start = time.perf_counter()
    run(lambda count: stamps.append((time.perf_counter(), count)))
    (first_time, first_count), (last_time, last_count) = stamps[0], stamps[-1]
    return first_time - start, (last_count - first_count) / (last_time - first_time), last_count


def _median_run(run, repeats: int) -> tuple[float, float, int]:
    runs = [_timed_run(run) for _ in range(repeats)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2])


def measure(config_name: str, new_tokens: int, no_cache_tokens: int, repeats: int, tokenizer_dir) -> dict:
    config = CONFIGS[config_name]
    encoder, head = random_model(config)
    tokenizer = load_tokenizer(tokenizer_dir)
    prompt_ids = list(tokenizer(enhancer_request("a bakery sign at sunrise", 1024, 768),
                                add_special_tokens=False)["input_ids"])
    token_grammar = CaptionTokenGrammar(TokenVocabulary.from_tokenizer(tokenizer, config.vocab_size))

    def plain(tokens, use_cache):
        return lambda on_tokens: generate(encoder, head, prompt_ids, tokens, SampledTokens(0.0),
                                          use_cache=use_cache, on_tokens=on_tokens)

    def constrained(on_tokens):
        choice = ConstrainedCaptionChoice(token_grammar, new_tokens, temperature=1.0, seed=1)
        generate(encoder, head, prompt_ids, new_tokens, choice, on_tokens=on_tokens)

    prefill_s, cached, _ = _median_run(plain(new_tokens, True), repeats)
    _, uncached, _ = _median_run(plain(no_cache_tokens, False), repeats)
    constrained(lambda count: None)  # fill the mask caches once, as a second enhancer run finds them
    _, constrained_rate, constrained_tokens = _median_run(constrained, repeats)
    return {
        "config": config_name, "hidden": config.hidden_size, "layers": len(encoder.layers),
        "prompt_tokens": len(prompt_ids), "threads": torch.get_num_threads(), "prefill_s": prefill_s,
        "cache_tokens_per_s": cached, "no_cache_tokens_per_s": uncached,
        "constrained_tokens": constrained_tokens, "constrained_tokens_per_s": constrained_rate,
        "new_tokens": new_tokens, "no_cache_new_tokens": no_cache_tokens, "repeats": repeats,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per run with the cache")
    parser.add_argument("--no-cache-tokens", type=int, default=16, help="tokens per run without the cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokenizer-dir", required=True,
                        help="a Qwen tokenizer folder, e.g. <ComfyUI>/comfy/text_encoders/qwen25_tokenizer")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.config, args.new_tokens, args.no_cache_tokens, args.repeats, args.tokenizer_dir)
    print(f"config {result['config']} (hidden {result['hidden']}, {result['layers']} layers, float32, CPU, "
          f"{result['threads']} threads), prompt {result['prompt_tokens']} tokens")
    print(f"prompt pass (first token) {result['prefill_s']:.3f} s")
    print(f"with KV cache          {result['cache_tokens_per_s']:.1f} tokens/s")
    print(f"without KV cache       {result['no_cache_tokens_per_s']:.1f} tokens/s")
    print(f"constrained, cached    {result['constrained_tokens_per_s']:.1f} tokens/s "
          f"({result['constrained_tokens']} tokens)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
