"""Label-free tuning (``vlsam-tune``, issue 19; PnP-OVSS, method.md section 8).

* ``search_space``: the tunables searched, as data (dotted config keys and their ranges);
* ``reward``: the contrastive reward and the image-text scorer protocol it uses;
* ``clip_scorer``: that protocol with a transformers CLIP model from a local folder;
* ``frames``: unlabelled frames from an image folder or a rosbag2;
* ``search``: seeded, resumable random search (a checkpoint of trials);
* ``tool``: the ``vlsam-tune`` command.
"""
