import Type from 'typebox';

/**
 * The largest machine a hello may claim. Generous for real hardware (the biggest single-image
 * servers have under 1,024 cores and 48 TiB of memory; the largest GPUs under 300 GB), small
 * enough that a key cannot list a fantasy machine that inflates every listing and summary it
 * appears in. The coordinator refuses a hello beyond them (PROTOCOL_ERROR naming the field);
 * an agent can check its inventory against the same schema before it connects.
 */
export const HARDWARE_LIMITS = {
  cores: 1024,
  /** 64 TiB. */
  memoryGiB: 65_536,
  /** 1 PiB. */
  diskGiB: 1_048_576,
  gpus: 64,
  /** Per GPU: 1 TiB. */
  vramGiB: 1024,
  /** Placement attributes (region, tier, …) of one provider. */
  attributes: 32,
  /** GPU models one provider prices or benchmarks. */
  gpuModels: 64,
} as const;

export const GpuInfo = Type.Object(
  {
    /** The driver's index: small, unique within one hello. */
    index: Type.Integer({ minimum: 0, maximum: 1023 }),
    uuid: Type.String({ maxLength: 128 }),
    model: Type.String({ maxLength: 128, description: 'normalized, e.g. rtx-4090, a100-80gb, h100-80gb' }),
    name: Type.String({ maxLength: 256, description: 'as reported by the driver' }),
    vramGiB: Type.Number({ minimum: 0, maximum: HARDWARE_LIMITS.vramGiB }),
  },
  { additionalProperties: false },
);
export type GpuInfo = Type.Static<typeof GpuInfo>;

export const Hardware = Type.Object(
  {
    cpu: Type.Object(
      { model: Type.String({ maxLength: 256 }), cores: Type.Integer({ minimum: 1, maximum: HARDWARE_LIMITS.cores }) },
      { additionalProperties: false },
    ),
    memoryGiB: Type.Number({ minimum: 0, maximum: HARDWARE_LIMITS.memoryGiB }),
    diskGiB: Type.Number({ minimum: 0, maximum: HARDWARE_LIMITS.diskGiB }),
    gpus: Type.Array(GpuInfo, { maxItems: HARDWARE_LIMITS.gpus }),
  },
  { additionalProperties: false },
);
export type Hardware = Type.Static<typeof Hardware>;
