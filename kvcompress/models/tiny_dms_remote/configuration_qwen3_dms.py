"""Config of kvcompress's tiny DMS fixture (written for kvcompress; this is not NVIDIA's code).

The class keeps transformers' name (Qwen3Config), as DMS-8x's remote config does, so a DMS checkpoint can only be
recognised by what its config carries (`dms_window_size`). Fixture-only keys start with `tiny_dms_`.
"""

from transformers.models.qwen3.configuration_qwen3 import Qwen3Config as _Qwen3Config


class Qwen3Config(_Qwen3Config):
    def __init__(self, dms_window_size: int = 64, dms_block_size: int = 16, dms_initial_tokens: int = 128,
                 tiny_dms_keep_every: list[int] | None = None, **kwargs):
        # A token marked for eviction stays visible while it is among the last `dms_window_size` tokens.
        self.dms_window_size = dms_window_size
        self.dms_block_size = dms_block_size  # tokens per page of the paged pool (DMS-8x: 256)
        self.dms_initial_tokens = dms_initial_tokens  # pool size at first use, per (batch x kv head) (DMS-8x: 2048)
        # The fixture's eviction rule, one entry per kv head: head h keeps one token in keep_every[h] once it has left
        # the window (1 = keeps everything). DMS-8x decides with a trained query channel instead.
        self.tiny_dms_keep_every = list(tiny_dms_keep_every or [1])
        super().__init__(**kwargs)
