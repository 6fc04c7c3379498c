"""CPU implementation of the grouped MoE ops: their references. The ops exist for TensorRT, whose
ahead-of-time plugins each launch one kernel (export/tensorrt.py writes a prefill's zoo::moe_experts as
them); on CPU a model runs zoo::moe_experts' own grouped implementation."""

from zoo.ops.moe_grouped.reference import moe_grouped_down_ref, moe_grouped_gate_up_ref, moe_schedule_ref

moe_schedule_cpu = moe_schedule_ref
moe_grouped_gate_up_cpu = moe_grouped_gate_up_ref
moe_grouped_down_cpu = moe_grouped_down_ref
