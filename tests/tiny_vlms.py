"""Tiny random vision-language models in the real Hugging Face folder format, written at test time.

Nothing is downloaded: the tokenizers are trained here with the ``tokenizers``
library on a few sentences (byte-level BPE as Qwen's, Metaspace BPE with byte
fallback as LLaMA's), the image processors are built from their classes, and
the models are random with a few small layers. The folders are what
``save_pretrained`` writes for the published models (config.json,
generation_config.json, model.safetensors, processor_config.json,
tokenizer.json, tokenizer_config.json, chat_template.jinja).

    write_qwen25_vl(folder)   # Qwen2.5-VL (Qwen2VLImageProcessor, Qwen2 BPE tokenizer)
    write_llava(folder)       # LLaVA-1.5 layout (CLIP vision tower + LLaMA, CLIPImageProcessor)
"""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = ["a photo of a red brick house with a wooden door in warm evening light",
          "an old man in a wool coat stands on a stone bridge over a river, soft overcast daylight",
          "close-up of a cat with striped fur on a linen sofa, window light"] * 8

QWEN_CHAT = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
             "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
             "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
             "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
             "{% endif %}")
LLAVA_CHAT = ("{% for message in messages %}{{ message['role'].upper() }}: {% if message['content'] is string %}"
              "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
              "<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n"
              "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _bpe(special, byte_level: bool, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                        initial_alphabet=alphabet, show_progress=False))
    return tok


def write_qwen25_vl(folder, seed: int = 0) -> Path:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    folder = Path(folder)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    tok = _bpe(special, byte_level=True, vocab_size=400)
    v = tok.get_vocab()
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None)
    images = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2,
                                   temporal_patch_size=2)
    Qwen2_5_VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=QWEN_CHAT).save_pretrained(folder)
    ids = {"eos_token_id": v["<|im_end|>"], "pad_token_id": v["<|endoftext|>"], "bos_token_id": v["<|endoftext|>"]}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, **ids),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                           window_size=56),
        image_token_id=v["<|image_pad|>"], video_token_id=v["<|video_pad|>"],
        vision_start_token_id=v["<|vision_start|>"], vision_end_token_id=v["<|vision_end|>"], **ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(folder)
    return folder


def write_llava(folder, seed: int = 0) -> Path:
    from transformers import (CLIPImageProcessor, LlamaTokenizerFast, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    folder = Path(folder)
    tok = _bpe(["<unk>", "<s>", "</s>", "<image>", "<pad>"], byte_level=False, vocab_size=300)
    v = tok.get_vocab()
    tokenizer = LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   chat_template=LLAVA_CHAT, num_additional_image_tokens=1).save_pretrained(folder)
    ids = {"bos_token_id": v["<s>"], "eos_token_id": v["</s>"], "pad_token_id": v["<pad>"]}
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=28, patch_size=14, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **ids),
        image_token_id=v["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(folder)
    return folder
