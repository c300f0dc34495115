"""Train and evaluate AAformer (or one of its ablation baselines) on a re-ID dataset, with accelerate.

    accelerate launch examples/train.py --config examples/configs/market1501.yaml --data_root /data/market1501
    accelerate launch examples/train.py --config examples/configs/synthetic.yaml        # SYNTHETIC demo, CPU
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/train.py --config ...  # two CPU processes

Every TrainConfig field (aaformer_hf/training/config.py) is a flag and overrides the YAML file. Writes
OUTPUT_DIR/metrics.json (final R1/R5/R10/mAP/mINP, images/s), OUTPUT_DIR/model/ (save_pretrained: loadable by
transformers' AutoModel and by timm), OUTPUT_DIR/best_model/ and OUTPUT_DIR/checkpoints/{epoch_N,step_N}/.
"""
from aaformer_hf.training import main

if __name__ == '__main__':
    main()
