"""pitstop: an agent-aware LLM serving engine.

    from pitstop import LLM, SamplingParams
    llm = LLM(model="SmolLM2-135M-Instruct")
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
"""

from pitstop.sampling_params import SamplingParams, StructuredOutputsParams

__version__ = "0.1.0"


def __getattr__(name: str):
    # LLM pulls in torch and transformers: import it lazily so light modules stay light.
    if name == "LLM":
        from pitstop.entrypoints.llm import LLM
        return LLM
    if name in ("RequestOutput", "CompletionOutput"):
        from pitstop import outputs
        return getattr(outputs, name)
    raise AttributeError(name)


__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams", "__version__"]
