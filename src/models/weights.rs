//! Loading state dicts (torch.save zip `.pth`/`.pt`, `.safetensors`) into a network's VarStore.
