"""The spill files of one MongoDB pipeline: the one being appended to and the ones waiting for
replay, oldest first. Owned by the pipeline's worker thread; the reactor side sees a
:class:`~.messages.SpillState` after every job.
"""

from __future__ import annotations

from pathlib import Path

from crawlproj.pipelines.spill import SpillFile, SpillWriter, claim_spill_files

from .messages import SpillState


class SpillBacklog:
    def __init__(self, directory: Path):
        self.directory = directory
        self.writer = SpillWriter(directory)
        self.files: list[SpillFile] = []  # to replay, oldest first

    def claim(self) -> None:
        """Take over the spill files of processes that are gone (a crash, a stopped node)."""
        self.files = claim_spill_files(self.directory)

    def state(self) -> SpillState:
        return SpillState(len(self.files), sum(f.remaining for f in self.files), self.writer.size,
                          self.writer.path)

    def append(self, records: list[bytes]) -> int:
        return self.writer.append(records)

    def oldest(self) -> SpillFile:
        """The file to replay next; the current file is detached for it when nothing older waits."""
        if not self.files:
            detached = self.writer.detach()
            assert detached is not None, "nothing to replay"
            self.files.append(detached)
        return self.files[0]

    def replayed(self, spill: SpillFile) -> None:
        """``spill`` is replayed to its end (and removed)."""
        self.files.remove(spill)

    def close(self) -> None:
        self.writer.close()
        for spill in self.files:
            spill.close()
