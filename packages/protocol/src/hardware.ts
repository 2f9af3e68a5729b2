import Type from 'typebox';

export const GpuInfo = Type.Object(
  {
    /** The driver's index: small (a machine has at most 64 GPUs here), unique within one hello. */
    index: Type.Integer({ minimum: 0, maximum: 1023 }),
    uuid: Type.String({ maxLength: 128 }),
    model: Type.String({ maxLength: 128, description: 'normalized, e.g. rtx-4090, a100-80gb, h100-80gb' }),
    name: Type.String({ maxLength: 256, description: 'as reported by the driver' }),
    vramGiB: Type.Number({ minimum: 0 }),
  },
  { additionalProperties: false },
);
export type GpuInfo = Type.Static<typeof GpuInfo>;

export const Hardware = Type.Object(
  {
    cpu: Type.Object({ model: Type.String({ maxLength: 256 }), cores: Type.Integer({ minimum: 1, maximum: 4096 }) }, { additionalProperties: false }),
    memoryGiB: Type.Number({ minimum: 0, maximum: 1_048_576 }),
    diskGiB: Type.Number({ minimum: 0, maximum: 1_073_741_824 }),
    gpus: Type.Array(GpuInfo, { maxItems: 64 }),
  },
  { additionalProperties: false },
);
export type Hardware = Type.Static<typeof Hardware>;
