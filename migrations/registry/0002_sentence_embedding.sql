-- Sentence-embedding models (a tar of config, tokenizer and safetensors weights) beside ONNX.
ALTER TABLE registry.models DROP CONSTRAINT models_framework_check;
ALTER TABLE registry.models ADD CONSTRAINT models_framework_check
    CHECK (framework IN ('onnx', 'sentence-embedding'));
