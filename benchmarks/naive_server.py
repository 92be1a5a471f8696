"""The baseline people write by hand: FastAPI + uvicorn, one onnxruntime call per request.

    MODEL=examples/models/mlp/model.onnx uvicorn benchmarks.naive_server:app --port 9000
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

session = ort.InferenceSession(os.environ["MODEL"], providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


@app.post("/infer")
async def infer(request: Request) -> dict[str, list[list[float]]]:
    body = await request.json()
    x = np.asarray(body["inputData"], dtype=np.float32)
    outputs = session.run(None, {input_name: x})
    return {"outputs": outputs[0].tolist()}
