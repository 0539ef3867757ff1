"""An exported child as an MLflow pyfunc: prompts in, greedy completions out.

Logged as code ("models from code"): MLflow copies this file into the model, so loading needs
only mlflow, torch and transformers, not puzzle_dsl. The child's HF directory (weights,
tokenizer, its Nemotron-NAS remote code) is the model's only artifact.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

MAX_NEW_TOKENS = 32  # when params give none (the logged signature states the same default)


class ChildModel(PythonModel):
    """`predict(["prompt", ...], params={"max_new_tokens": N})` -> completions (greedy)."""

    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        (path,) = context.artifacts.values()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()

    def predict(self, context, model_input, params=None):
        import torch

        if isinstance(model_input, pd.DataFrame):
            prompts = model_input.iloc[:, 0].astype(str).tolist()
        else:
            prompts = [model_input] if isinstance(model_input, str) else list(model_input)
        new = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        out = []
        for prompt in prompts:  # one at a time: no padding side to get wrong
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                gen = self.model.generate(ids, max_new_tokens=new, do_sample=False,
                                          pad_token_id=self.tokenizer.eos_token_id)
            out.append(self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out


mlflow.models.set_model(ChildModel())
