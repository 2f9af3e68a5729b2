export * from './signing.ts';
export * from './key-file.ts';
export * from './signed-fetch.ts';
export * from './verified-download.ts';
export * from './hash.ts';
