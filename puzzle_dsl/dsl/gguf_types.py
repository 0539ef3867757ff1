"""What the GGUF export writes and what llama.cpp refuses (torch-free: the recipe layer reads it)."""

WRITTEN = ("f32", "f16")  # written by puzzle_dsl.model.gguf itself
QUANTIZED = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
             "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
             "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}  # through llama.cpp's quantizer
GGUF_TYPES = (*WRITTEN, *QUANTIZED)
LINEAR_FFN = ("llama.cpp's deci graph has no linear FFN (mlp.linear_mlp): neither its converter "
              "nor its graph can compute it")
