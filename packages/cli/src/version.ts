/** The CLI's version, without loading the protocol package (`gridwork --version` must be instant). */
export const VERSION = '0.1.0';
