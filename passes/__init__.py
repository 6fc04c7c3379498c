"""Graph passes: capture (torch.export), fusion of the DMC / SSD / MoE regions into `zoo::` custom ops,
the pass manager and the torch.compile backend. Populated by the issues that add the fused ops."""
