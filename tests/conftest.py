import os

# Every torchrun the tests start must survive an elastic restart (docs/RELIABILITY.md).
os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
