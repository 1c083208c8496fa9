"""The chat templates, written from the real formats: LLaVA-1.5's, LLaVA-NeXT's (Mistral) and
Qwen2-VL's (ChatML, shared by Qwen2.5-VL).

Message content is a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
Assistant replies sit in {% generation %} blocks so that TRL's assistant_only_loss
(return_assistant_tokens_mask) works.

The Llama/Mistral templates start with bos_token (as Mistral's own template does; llava-hf's
leave it to the tokenizer). TRL tokenizes templated text with add_special_tokens=False, and
processor.apply_chat_template(tokenize=True) skips special tokens when the text starts with bos,
so training and generation both see exactly one <s>. Tokenizing a rendered prompt yourself:
pass add_special_tokens=False.
"""

from __future__ import annotations

# Binds `parts`: the message content as a list of parts.
_CONTENT_AS_PARTS = r"""
  {%- if message.content is string -%}
    {%- set parts = [{'type': 'text', 'text': message.content}] -%}
  {%- else -%}
    {%- set parts = message.content -%}
  {%- endif -%}"""

# Binds `text`: the text parts of the message, joined.
_TEXT_OF_PARTS = r"""
  {%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"""

# LLaVA-1.5 (vicuna v1): "USER: <image>\n{question} ASSISTANT: {answer}</s>USER: ...".
# Images come before the text of a user turn; the generation prompt is "ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    r"""{{- bos_token -}}
{%- for message in messages -%}"""
    + _CONTENT_AS_PARTS
    + _TEXT_OF_PARTS
    + r"""
  {%- if message.role == 'system' -%}
    {{- text + ' ' -}}
  {%- elif message.role == 'user' -%}
    {{- 'USER: ' -}}
    {%- for part in parts if part.type == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
    {{- text + ' ' -}}
  {%- elif message.role == 'assistant' -%}
    {{- 'ASSISTANT: ' -}}
    {%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"""
)

# LLaVA-NeXT on Mistral: "[INST] <image>\n{question} [/INST] {answer}</s>[INST] ...". Mistral has no
# system role: a system message is put at the top of the first user turn. The reply follows
# [/INST] directly, so add_generation_prompt adds nothing.
LLAVA_NEXT_CHAT_TEMPLATE = (
    r"""{{- bos_token -}}
{%- set system = namespace(text='') -%}
{%- for message in messages -%}"""
    + _CONTENT_AS_PARTS
    + _TEXT_OF_PARTS
    + r"""
  {%- if message.role == 'system' -%}
    {%- set system.text = text + '\n\n' -%}
  {%- elif message.role == 'user' -%}
    {{- '[INST] ' + system.text -}}
    {%- set system.text = '' -%}
    {%- for part in parts if part.type == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
    {{- text + ' [/INST]' -}}
  {%- elif message.role == 'assistant' -%}
    {{- ' ' -}}
    {%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}
  {%- endif -%}
{%- endfor -%}"""
)

# Qwen2-VL / Qwen2.5-VL (ChatML): a default system message, images and text in the order given,
# each image as <|vision_start|><|image_pad|><|vision_end|> ("Picture N: " first if add_vision_id).
QWEN2_VL_CHAT_TEMPLATE = (
    r"""{%- set image_count = namespace(value=0) -%}
{%- for message in messages -%}
  {%- if loop.first and message.role != 'system' -%}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message.role + '\n' -}}"""
    + _CONTENT_AS_PARTS
    + r"""
  {%- set rendered = namespace(text='') -%}
  {%- for part in parts -%}
    {%- if part.type == 'image' -%}
      {%- set image_count.value = image_count.value + 1 -%}
      {%- if add_vision_id -%}
        {%- set rendered.text = rendered.text + 'Picture ' + image_count.value | string + ': ' -%}
      {%- endif -%}
      {%- set rendered.text = rendered.text + '<|vision_start|><|image_pad|><|vision_end|>' -%}
    {%- elif part.type == 'video' -%}
      {%- set rendered.text = rendered.text + '<|vision_start|><|video_pad|><|vision_end|>' -%}
    {%- elif part.type == 'text' -%}
      {%- set rendered.text = rendered.text + part.text -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if message.role == 'assistant' -%}
    {%- generation -%}{{- rendered.text + '<|im_end|>' -}}{%- endgeneration -%}
  {%- else -%}
    {{- rendered.text + '<|im_end|>' -}}
  {%- endif -%}
  {{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""
)
