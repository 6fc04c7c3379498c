"""CPU implementation of the routed MoE ops: their references. The ops exist for TensorRT, whose
ahead-of-time plugins each launch one kernel (export/tensorrt.py rewrites zoo::moe_experts into them); on
CPU a model runs zoo::moe_experts' grouped implementation, which reads each expert's weights once for all
its tokens instead of once per routed slot."""

from zoo.ops.moe_routed.reference import moe_routed_down_ref, moe_routed_gate_up_ref

moe_routed_gate_up_cpu = moe_routed_gate_up_ref
moe_routed_down_cpu = moe_routed_down_ref
