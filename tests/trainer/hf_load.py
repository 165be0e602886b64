"""Load an exported model directory with transformers alone, in a fresh process (run by
test_export.py): logits for given ids, a tokenizer round trip, and a pipeline generation.

    python hf_load.py EXPORT_DIR IN.json OUT.pt
IN.json: {"ids": [[...]], "text": "..."}. Fails if anything imported slmjobs or trainer.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

export_dir, request, result = sys.argv[1:]
asked = json.loads(open(request).read())
model = AutoModelForCausalLM.from_pretrained(export_dir, torch_dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(export_dir)
with torch.no_grad():
    logits = model(torch.tensor(asked['ids'])).logits
ids = tokenizer(asked['text'])['input_ids']
generated = pipeline('text-generation', model=export_dir, device='cpu')(
    asked['text'][:20], max_new_tokens=8, do_sample=False)[0]['generated_text']
ours = sorted(m for m in sys.modules if m.split('.')[0] in ('slmjobs', 'trainer'))
assert not ours, f'the export needs our code: {ours}'
torch.save({'logits': logits, 'ids': ids, 'decoded': tokenizer.decode(ids), 'generated': generated,
            'vocab_size': model.config.vocab_size, 'eos_token_id': tokenizer.eos_token_id}, result)
