"""The command-line programs (``resnext-predict``, ``resnext-export``,
``resnext-serve``, ``resnext-summary``, ``resnext-to-safetensors``). The
library never imports them."""
