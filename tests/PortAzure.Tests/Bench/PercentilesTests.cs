using PortAzure.LoadBench;

namespace PortAzure.Tests.Bench;

/// <summary>The nearest-rank percentiles the benchmark reports.</summary>
public class PercentilesTests
{
    [Fact]
    public void Of_OneToThousand_GivesNearestRanks()
    {
        var percentiles = Percentiles.Of(Enumerable.Range(1, 1000).Select(i => (double)i).Reverse());

        Assert.Equal(new Percentiles(1000, 500, 990, 999, 1000), percentiles);
    }

    [Fact]
    public void Of_FewerValuesThanThePercentileNeeds_GivesTheMaximum()
    {
        var percentiles = Percentiles.Of([3, 1, 2]);

        Assert.Equal(2, percentiles.P50);
        Assert.Equal(3, percentiles.P99);
        Assert.Equal(3, percentiles.P999);
    }

    [Fact]
    public void Of_NoValues_IsNotANumberAndPrintsNA()
    {
        var percentiles = Percentiles.Of([]);

        Assert.Equal(0, percentiles.Count);
        Assert.True(double.IsNaN(percentiles.P99));
        Assert.Equal("n/a", percentiles.ToString());
    }
}
