# GPU image for ldiff: CUDA PyTorch base, ldiff installed, `ldiff` as the entry point.
#   docker build -t ldiff .
#   docker run --gpus all -v $PWD:/work -w /work ldiff fit --config configs/prior/kolmogorov.yaml --trainer.devices 1
#   docker run --gpus all -v $PWD:/work -w /work ldiff predict --config configs/predict/kolmogorov.yaml --trainer.devices 4 --trainer.strategy ddp
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/ldiff
COPY pyproject.toml README.md ./
COPY ldiff ./ldiff
COPY configs ./configs
# torch comes from the base image (CUDA build); pip keeps it because it satisfies torch>=2.3.
RUN pip install --no-cache-dir '.[cfd]'

ENV WANDB_MODE=offline
ENTRYPOINT ["ldiff"]
CMD ["--help"]
