"""What every task of ours shares: audio in, no dictionaries, no token-count position limit."""
from fairseq.tasks import FairseqTask


class AudioTask(FairseqTask):
    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return None
