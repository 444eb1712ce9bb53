"""Storage engines: where a node keeps its records.  Knows nothing of the network."""

from twisted_dhm.storage.interface import (
    IStorageEngine,
    Record,
    RecordView,
    ScanEntry,
    StorageError,
    StorageFull,
    StorageStats,
)

__all__ = [
    "IStorageEngine",
    "Record",
    "RecordView",
    "ScanEntry",
    "StorageError",
    "StorageFull",
    "StorageStats",
]
