"""Tiny prompt-extractor models written in their official formats, built offline per test session.

* ``tiny_ram``: a random RAM with tiny widths (64² input), saved as the official ``{"model": state}``
  checkpoint (official key names, unused ``tag_encoder`` entries and all), plus a tag list and a
  per-class threshold file.
* ``tiny_vlm``: a random Idefics3 model (SmolVLM's architecture, the default VLM) with an offline word-level
  tokenizer, an image processor and a chat template, saved with ``save_pretrained``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from elqproj.prompts.ram_model import RAMConfig, RAMModel

TINY_RAM_CONFIG = RAMConfig(
    image_size=64, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4,
    head_hidden_size=16, head_num_heads=4, head_intermediate_size=32, num_classes=6,
)
TINY_TAGS = ["dog", "cat", "tree", "sky", "3D glasses", "zebra crossing "]

# RAMModel's head names -> the official BERT names (the inverse of the loader's table).
_OFFICIAL_HEAD = {
    "cross_attn.query": "crossattention.self.query",
    "cross_attn.key": "crossattention.self.key",
    "cross_attn.value": "crossattention.self.value",
    "cross_attn.out": "crossattention.output.dense",
    "cross_attn_norm": "crossattention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def official_state(model: RAMModel) -> dict[str, torch.Tensor]:
    """A RAMModel's weights under the official RAM names, as ram_swin_large_14m.pth stores them."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.clone()
        if key.startswith("visual_encoder."):
            # timm downsamples at the start of stage i, the official Swin at the end of stage i - 1.
            key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        elif match := re.match(r"tagging_head\.layers\.(\d+)\.(.+)\.(weight|bias)$", key):
            key = f"tagging_head.encoder.layer.{match.group(1)}.{_OFFICIAL_HEAD[match.group(2)]}.{match.group(3)}"
        out[key] = value
    # Parts of the official model the tagger does not use (present in the released file).
    out["tag_encoder.embeddings.word_embeddings.weight"] = torch.zeros(4, 16)
    out["text_decoder.cls.predictions.bias"] = torch.zeros(4)
    return out


def dape_lora(state: dict[str, torch.Tensor], *, seed: int = 7, zero: bool = False) -> dict[str, torch.Tensor]:
    """A DAPE.pth-style LoRA file (loralib layouts, rank 8) for an official RAM state dict."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.zeros(shape) if zero else 0.3 * torch.randn(shape, generator=generator)

    lora = {}
    for key, weight in state.items():
        target = key.removesuffix(".weight")
        if key.startswith("visual_encoder.") and key.endswith(".attn.qkv.weight"):
            dim = weight.shape[1]
            lora[f"{target}.lora_A"], lora[f"{target}.lora_B"] = rand(16, dim), rand(2 * dim, 8)
        elif re.search(r"^tagging_head\..*crossattention\.self\.(query|key)\.weight$", key):
            lora[f"{target}.lora_A"], lora[f"{target}.lora_B"] = rand(8, weight.shape[1]), rand(weight.shape[0], 8)
    lora["tag_encoder.encoder.layer.0.attention.self.query.lora_A"] = torch.randn(8, 16)
    lora["tag_encoder.encoder.layer.0.attention.self.query.lora_B"] = torch.zeros(16, 8)
    return lora


@dataclass
class TinyRAM:
    model: RAMModel  # the source of the checkpoint, for comparisons
    checkpoint: Path  # {"model": official state, "optimizer": {}, "epoch": 3}
    tags: Path
    thresholds: Path

    def load_options(self) -> dict:
        return {"weights": self.checkpoint, "tag_list": self.tags, "tag_thresholds": self.thresholds,
                "config": {"image_size": TINY_RAM_CONFIG.image_size}}


@pytest.fixture(scope="session")
def tiny_ram(tmp_path_factory) -> TinyRAM:
    root = tmp_path_factory.mktemp("tiny-ram")
    torch.manual_seed(0)
    model = RAMModel(TINY_RAM_CONFIG).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    torch.save({"model": official_state(model), "optimizer": {}, "epoch": 3}, root / "ram_swin_large_14m.pth")
    (root / "tags.txt").write_text("\n".join(TINY_TAGS), encoding="utf-8")
    (root / "thresholds.txt").write_text("\n".join(["0.5"] * len(TINY_TAGS)) + "\n", encoding="utf-8")
    return TinyRAM(model, root / "ram_swin_large_14m.pth", root / "tags.txt", root / "thresholds.txt")


VLM_WORDS = "user assistant describe the image as if its degradations were removed dog cat gray sky tree , .".split()


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> Path:
    """A saved random Idefics3 (SmolVLM) model + processor, loadable with the Auto classes offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    root = tmp_path_factory.mktemp("tiny-vlm")
    special = ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
               "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    vocab = {token: i for i, token in enumerate(special + VLM_WORDS)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>", additional_special_tokens=special[2:],
    )
    chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}:{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
        "<end_of_utterance>{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                             do_image_splitting=False)
    # image_seq_len = (image_size / patch_size)² / scale_factor² = (32 / 8)² / 2² = 4
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=chat_template)
    config = Idefics3Config(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": len(vocab),
                     "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
        scale_factor=2, image_token_id=vocab["<image>"], pad_token_id=0,
    )
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(root)
    processor.save_pretrained(root)
    return root
