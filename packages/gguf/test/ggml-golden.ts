import { fillTriangular, seededUint32 } from '../src/prng.ts'

/**
 * A fixed input: bell-shaped super-blocks at nine scales, and awkward ones (zeros, a constant,
 * spikes, tiny, positive-only and huge values).
 */
export function goldenInput(): Float32Array {
  const x = new Float32Array(256 * 64)
  fillTriangular(seededUint32(1, 'golden'), x, 0, 1)
  for (let i = 2048; i < x.length; i++) x[i] = x[i]! * 2 ** ((Math.floor(i / 256) % 9) - 4)
  x.fill(0, 256, 512)
  x.fill(0.75, 512, 768)
  for (let i = 768; i < 1024; i++) x[i] = i % 17 === 0 ? 40 - i / 10 : x[i]! * 0.001
  for (let i = 1024; i < 1280; i++) x[i] = x[i]! * 1e-6
  for (let i = 1280; i < 1536; i++) x[i] = Math.abs(x[i]!) + 0.5
  for (let i = 1536; i < 1792; i++) x[i] = x[i]! * 3000
  return x
}

// SHA-256 of what ggml's own quantize_row_<type>_ref (ggml_fp32_to_fp16_row, ggml_fp32_to_bf16_row_ref)
// and dequantize_row_<type> (libggml-base from node-llama-cpp 3.22.1, x86-64) produce for
// goldenInput() as one row: test/quants.test.ts checks @meshnet/gguf against them anywhere, and
// test/ggml-bitexact.test.ts recomputes them from the library when a C compiler is present.
export const GGML_GOLDEN: Record<string, { quantized: string; dequantized: string }> = {
  F16: {
    quantized: '08571c5e8f8094c5c52eab8ce8c4b92779c48a309ef8d6dd8f5666cf291a98ef',
    dequantized: '191ef16e9bfa9c276609d6c50d1de2a2bcdb9662867b829f7efd799fee10a306',
  },
  BF16: {
    quantized: '02d3532774fd5974e08d3a058067e6b26f693ba9af3ae716a023b44fd65fb962',
    dequantized: 'fcdd39737a0639447c18594f9d083d62661b99cb90f745fcf81fb523dd1bbb8d',
  },
  Q8_0: {
    quantized: '897e2b53320ad7732584ff3fdb7de54c51ea79b57fb8babec6a4ab1a201cb9b3',
    dequantized: 'd086e7eaba882090d7f1b0e7cf5ab6269b5c4b212e33bde315e1a15031708e08',
  },
  Q4_0: {
    quantized: 'd0e9616703bc59e37ac18f48f97388fbcbef24c78a8f14fbd077d234dc94258e',
    dequantized: '40208ccd9f0608ca08a2770fe4f9f69c8f27dd40992538e931517bc762fe5e21',
  },
  Q4_1: {
    quantized: '55109dcc57bd7855cb7619a80c42c3cd5b1a8ff0acdb7342645ca1ac08e55317',
    dequantized: 'cb3245a2d7a0a8837b6e9c59a12c1313b6ed3343307ea919e4ab9f9a1d1269b4',
  },
  Q5_0: {
    quantized: '9b7d95d281920bb4df97f58379f6b6e8eaa9ba33af6c0a56e9589a05c9ba2f5a',
    dequantized: 'f65deb400bb553a8a6b00db0f81dca5764e5fb3e97df261e03925fe66a9886fb',
  },
  Q5_1: {
    quantized: '6ef87aa33e0f267ca728e738c7ed594cadd7641bad2d0c6d7ba82bef12a903d4',
    dequantized: '72697490a1b6a79f16d8efc26e2229a607cde39808eb67fd62401056d7b760df',
  },
  Q2_K: {
    quantized: '874f89973e45567ed27f74328999d967d20b575d4e2c9e799b7c942f6730a7cc',
    dequantized: 'c211d75d6025e72b1ab1979d1ecfb7b2c4358320ec96bdc97fba1e663e8389e5',
  },
  Q3_K: {
    quantized: 'afe1e004acf4447159c5ecfa5560a54f603a89e590fc5b8610e2b4abe9c1a032',
    dequantized: '748f948c4a14433b3b1e301c887a8694e1b8c015700fab43da1eb358646dd2e8',
  },
  Q4_K: {
    quantized: 'a8a3480db693d99fcce09b9847fdafbb72d2bc2ebc8d954fdcf781d6f236d5b1',
    dequantized: 'ba227363a2a6247206fe7b9fa618c298c9c7488f01c1b26a8f0735b0df3d0d26',
  },
  Q5_K: {
    quantized: '766a9654235ec0f7ceb020af9da6bcf478957719caf7647eec96ae1e06be67f4',
    dequantized: '6745cbaab4690000cc97edc64e538b70c06ce86233cd610e4cabc91e684c53de',
  },
  Q6_K: {
    quantized: 'ee883f455286d833252f81415a312eb43fccfd99f54db89db5a8cf65b5157aa4',
    dequantized: '4954dfd6faf8682801c3372d77de7dcfcd40baa5a5e9c628a441651e5d400ec6',
  },
  IQ4_NL: {
    quantized: 'd9597440ed7306339b91ce87731c9676f3926a331fc52f5ff0798a6f7e30de69',
    dequantized: 'ef21e5c99e89429b283786aaf76983749a11bedd611d71acebc8d7935e7eb14c',
  },
  IQ4_XS: {
    quantized: 'bb2afb300e82a13bd4060991b497557d2771f0cfd9723ef64e0e3996fbaf47fb',
    dequantized: '6106d327a0da26620e87f1183f591b4eb736cd764d394d13b3d33168759ac476',
  },
}
