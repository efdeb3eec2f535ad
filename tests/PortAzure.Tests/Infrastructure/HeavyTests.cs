namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// Tests that start whole process trees (the AppHost with DCP, real Dispatcher processes) or push
/// thousands of runs. They run on their own, after the rest, so that they do not starve the many
/// small timing-bound tests of the 2 cores.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HeavyTests
{
    public const string Name = "Heavy tests (run alone)";
}
