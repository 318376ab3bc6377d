"""The SDK's clients. ``atoll/sdk/_async`` is written by hand; ``atoll/sdk/_sync`` is generated
from it by ``scripts/unasync.py``, so a fix is made once and both flavours stay line-for-line alike."""
