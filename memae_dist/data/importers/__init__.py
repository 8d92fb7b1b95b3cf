"""Importers: turn a source dataset into ``writer.VideoSpec`` lists and write them.

- ``ucsd``: UCSD Ped1 / Ped2 in the "frames" or the original UCSD layout.
- ``avenue``: CUHK Avenue (.avi videos; mask-volume, .npy or .mat labels; or the frames layout).
- ``shanghaitech``: ShanghaiTech Campus (training videos, testing frame folders + frame masks).
- ``folder``: any folder of videos (any codec FFmpeg decodes) or frame folders, own labels.
- ``images``: a train/test/<class> folder of still images (MVTec AD layout) for the image and
  MLP nets; a stored "video" is a group of images.
- ``synthetic``: generated road videos for demos and tests.
- ``video_io``: decoding (PyAV) and frame-folder reading shared by the importers.
"""
