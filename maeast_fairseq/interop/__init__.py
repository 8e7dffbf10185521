"""Adapters to other toolkits' upstream interfaces; none of them imports fairseq (or the toolkit itself).

* :mod:`.s3prl`: :class:`~.s3prl.S3prlUpstream`, an s3prl-compatible upstream (SUPERB's weighted-sum Featurizer);
* :mod:`.hear`: the three HEAR functions ``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``.
"""
