import Type from 'typebox';

export const GpuInfo = Type.Object(
  {
    index: Type.Integer({ minimum: 0 }),
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
    cpu: Type.Object({ model: Type.String({ maxLength: 256 }), cores: Type.Integer({ minimum: 1 }) }, { additionalProperties: false }),
    memoryGiB: Type.Number({ minimum: 0 }),
    diskGiB: Type.Number({ minimum: 0 }),
    gpus: Type.Array(GpuInfo, { maxItems: 64 }),
  },
  { additionalProperties: false },
);
export type Hardware = Type.Static<typeof Hardware>;
