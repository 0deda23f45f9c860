"""Search spaces (YAML) and the Genotype schema."""
from search_spaces.genotype import Genotype, GenotypeError, LayerChoice, genotype_to_config
from search_spaces.space import LayerSpace, SearchSpace, SearchSpaceError, load_search_space

__all__ = ["Genotype", "GenotypeError", "LayerChoice", "genotype_to_config", "LayerSpace", "SearchSpace",
           "SearchSpaceError", "load_search_space"]
