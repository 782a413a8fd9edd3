"""Adversarial robustness: white-box FGSM / PGD on each detector's own differentiable score,
transfer of those images to every other detector, and their report views.

- :mod:`bilora.attacks.plan`: torch-free; the ``evaluation.attacks`` block read into the
  attack grid, the cells attacked and the checks made when the DAG is built.
- :mod:`bilora.attacks.subset`: the seeded images attacked (the same for every detector).
- :mod:`bilora.attacks.white_box`: adversarial-robustness-toolbox's FGSM / PGD driven through
  ``Detector.pixel_margin``, then uint8 quantisation inside the eps ball.
- :mod:`bilora.attacks.run`: one cell's attack job (adversarial PNGs and their scores) and one
  cell's transfer job (another detector's adversarial PNGs scored by this one).
"""
